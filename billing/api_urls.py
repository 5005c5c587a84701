"""The accounting-service paths, mounted at /api/accounting/ (no trailing slashes, as there)."""

from django.urls import path

from billing import api

urlpatterns = [
    path("account/system", api.SystemAccountView.as_view()),
    path("account/virtual-lab", api.VirtualLabAccountView.as_view()),
    path("account/project", api.ProjectAccountView.as_view()),
    path("balance/system", api.SystemBalanceView.as_view()),
    path("balance/virtual-lab/<str:vlab_id>", api.LabBalanceView.as_view()),
    path("balance/project/<str:proj_id>", api.ProjectBalanceView.as_view()),
    path("budget/top-up", api.TopUpView.as_view()),
    path("budget/assign", api.AssignView.as_view()),
    path("budget/reverse", api.ReverseView.as_view()),
    path("budget/move", api.MoveView.as_view()),
    path("budget/grant", api.GrantView.as_view()),
    path("budget/deplete/project", api.DepleteProjectView.as_view()),
    path("budget/deplete/virtual-lab", api.DepleteLabView.as_view()),
]
