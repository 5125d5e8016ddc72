from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.db import models


class Member(AbstractBaseUser):
    """A user model whose ``is_active`` is computed, not a column."""

    username = models.CharField(max_length=150, unique=True)
    suspended_at = models.DateTimeField(null=True, blank=True)

    USERNAME_FIELD = "username"

    objects = BaseUserManager()

    @property
    def is_active(self) -> bool:  # type: ignore[override]
        return self.suspended_at is None
