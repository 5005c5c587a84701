from django.urls import path

from accounts import lab_views

urlpatterns = [
    path("labs/new/", lab_views.lab_new, name="lab_new"),
    path("labs/<uuid:lab_id>/projects/", lab_views.project_new, name="project_new"),
    path("labs/<uuid:lab_id>/members/", lab_views.member_invite, name="member_invite"),
    path(
        "labs/<uuid:lab_id>/invitations/<uuid:invitation_id>/cancel/",
        lab_views.invitation_cancel,
        name="invitation_cancel",
    ),
    path(
        "invitations/<uuid:invitation_id>/<str:answer>/",
        lab_views.invitation_answer,
        name="invitation_answer",
    ),
    path(
        "labs/<uuid:lab_id>/members/<uuid:user_id>/",
        lab_views.member_change,
        name="member_change",
    ),
]
