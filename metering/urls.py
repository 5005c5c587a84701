from django.urls import path

from metering import usage_views, views

urlpatterns = [
    path("prices/", views.price_list, name="price_list"),
    path("app/labs/<uuid:lab_id>/usage/", usage_views.lab_usage_page, name="lab_usage"),
    path(
        "app/labs/<uuid:lab_id>/usage/<slug:table>.csv",
        usage_views.lab_usage_csv,
        name="lab_usage_csv",
    ),
]
