from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("labs/<uuid:lab_id>/", views.lab_detail, name="lab_detail"),
]
