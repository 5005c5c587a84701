from django.urls import path

from billing import views

urlpatterns = [
    path("labs/<uuid:lab_id>/", views.lab_detail, name="lab_detail"),
    path("labs/<uuid:lab_id>/budget/", views.lab_budget, name="lab_budget"),
]
