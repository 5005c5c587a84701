import pytest
from django.db import IntegrityError, transaction

from accounts.models import Lab, Membership, Role, User
from accounts.services import membership_add, personal_lab_create, user_create
from tests.factories import LabFactory, UserFactory


@pytest.mark.django_db
def test_users_sign_in_by_email_and_have_no_username():
    user = user_create(email="Hana@Example.COM", password="pw-1234567890")
    assert user.email == "hana@example.com"
    assert User.USERNAME_FIELD == "email"
    assert not hasattr(user, "username")
    assert user.check_password("pw-1234567890")


@pytest.mark.django_db
def test_emails_are_unique():
    user_create(email="ivy@example.com", password=None)
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user(email="ivy@example.com")


@pytest.mark.django_db
def test_superuser_is_staff():
    user = User.objects.create_superuser(email="root@example.com", password="x" * 12)
    assert user.is_staff and user.is_superuser


@pytest.mark.django_db
def test_personal_lab_is_created_once():
    user = UserFactory()
    first = personal_lab_create(user=user)
    assert personal_lab_create(user=user) == first
    assert Lab.objects.filter(personal_for=user).count() == 1
    assert first.projects.get().name == "Default"


@pytest.mark.django_db
def test_membership_is_unique_per_lab_and_user_and_role_changes_in_place():
    lab, user = LabFactory(), UserFactory()
    membership_add(lab=lab, user=user, role=Role.MEMBER)
    membership_add(lab=lab, user=user, role=Role.ADMIN)
    assert Membership.objects.get(lab=lab, user=user).role == Role.ADMIN
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(lab=lab, user=user, role=Role.MEMBER)


@pytest.mark.django_db
def test_the_database_refuses_an_unknown_role():
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(lab=LabFactory(), user=UserFactory(), role="king")
