from django.urls import path

from accounts import api

urlpatterns = [
    path("labs/", api.lab_list, name="api_lab_list"),
    path("labs/<uuid:lab_id>/", api.lab_detail, name="api_lab_detail"),
    path("projects/<uuid:project_id>/", api.project_detail, name="api_project_detail"),
]
