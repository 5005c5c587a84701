from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import views as core_views

admin.site.site_header = "Meterbill operations"
admin.site.site_title = "Meterbill admin"
admin.site.index_title = "Services, prices, labs and money"

urlpatterns = [
    path("", core_views.landing, name="landing"),
    path("health", core_views.health, name="health"),
    path("ready", core_views.ready, name="ready"),
    path("accounts/", include("allauth.urls")),
    path("app/", include("accounts.urls")),
    path("app/", include("billing.urls")),
    path("app/", include("keys.urls")),
    path("", include("metering.urls")),
    path("billing/", include("billing.stripe_urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api_schema"), name="api_docs"),
    path("api/v1/", include("accounts.api_urls")),
    path("api/v1/", include("metering.v1_urls")),
    path("api/v1/", include("keys.v1_urls")),
    path("api/v1/", include("billing.v1_urls")),
    # The accounting-service's own utility routes, for monitoring written against it.
    path("api/accounting/", RedirectView.as_view(pattern_name="api_docs"), name="accounting_root"),
    path("api/accounting/health", core_views.accounting_health, name="accounting_health"),
    path("api/accounting/version", core_views.accounting_version, name="accounting_version"),
    path("api/accounting/", include("billing.api_urls")),
    path("api/accounting/", include("metering.api_urls")),
    path("api/", include("keys.quota_urls")),
]

handler400 = "core.views.bad_request"
handler404 = "core.views.not_found"
handler500 = "core.views.server_error"
