import pytest


@pytest.mark.django_db
def test_unknown_api_path_is_json_404_in_the_error_shape(client):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {
        "error_code": "ENTITY_NOT_FOUND",
        "message": "Not found",
        "details": None,
    }


@pytest.mark.django_db
def test_unknown_page_is_an_html_404(client):
    response = client.get("/app/labs/not-a-uuid/")
    assert response.status_code == 404
    assert "text/html" in response["Content-Type"]


def test_validation_errors_keep_field_details():
    from rest_framework.exceptions import ValidationError
    from rest_framework.test import APIRequestFactory

    from core.errors import api_exception_handler

    request = APIRequestFactory().post("/x")
    response = api_exception_handler(
        ValidationError({"amount": ["Must be positive."]}), {"request": request}
    )
    assert response.status_code == 400
    assert response.data["error_code"] == "INVALID_REQUEST"
    assert response.data["message"] == "Validation error"
    assert response.data["details"] == {"amount": ["Must be positive."]}


def test_unexpected_errors_are_left_to_django():
    from core.errors import api_exception_handler

    assert api_exception_handler(RuntimeError("bug"), {}) is None


def test_api_error_renders_code_message_and_details():
    from rest_framework.test import APIRequestFactory

    from core.errors import NotFoundError, api_exception_handler

    request = APIRequestFactory().get("/x")
    response = api_exception_handler(
        NotFoundError("Project not found", details={"id": "x"}), {"request": request}
    )
    assert response.status_code == 404
    assert response.data == {
        "error_code": "ENTITY_NOT_FOUND",
        "message": "Project not found",
        "details": {"id": "x"},
    }


@pytest.mark.django_db
def test_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/labs/" in schema.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    # Swagger UI comes from our own static files, never a CDN.
    assert b"cdn" not in docs.content.lower()
    assert b"swagger-ui" in docs.content
    assert b'<a href="/app/" style="color: #0172ad;">back to the portal</a>' in docs.content


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/accounting/budget/top-up", "/api/v1/keys", "/api/v1/usage"])
def test_a_body_over_the_upload_limit_is_a_json_400_on_the_api(token_client, settings, url):
    client = token_client(["accounting", "keys", "usage"])
    client.raise_request_exception = False
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client.generic("POST", url, '{"name": "' + "x" * 2000 + '"}', "application/json")
    assert response.status_code == 400
    assert response.json() == {
        "error_code": "INVALID_REQUEST",
        "message": "The body is larger than 1000 bytes.",
        "details": None,
    }


def test_a_page_refused_before_its_view_is_still_html(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    client.raise_request_exception = False
    response = client.post("/accounts/login/", {"login": "x" * 2000, "password": "y"})
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
