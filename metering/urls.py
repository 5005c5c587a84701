from django.urls import path

from metering import views

urlpatterns = [
    path("prices/", views.price_list, name="price_list"),
]
