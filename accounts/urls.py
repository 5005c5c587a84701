from django.urls import path

from accounts import lab_views, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("labs/new/", lab_views.lab_new, name="lab_new"),
    path("labs/<uuid:lab_id>/projects/", lab_views.project_new, name="project_new"),
    path("labs/<uuid:lab_id>/members/", lab_views.member_add, name="member_add"),
    path(
        "labs/<uuid:lab_id>/members/<uuid:user_id>/",
        lab_views.member_change,
        name="member_change",
    ),
]
