# Written by hand: the constraints are built by drf_llm_keys.models, whose helper picks the
# CheckConstraint argument of the Django running the migration (check, or condition).

from django.db import migrations, models

from drf_llm_keys.models import budget_constraints, check_constraint


class Migration(migrations.Migration):
    dependencies = [
        ("drf_llm_keys", "0010_budgets"),
    ]

    operations = [
        *(
            migrations.AddConstraint(model_name="apikey", constraint=constraint)
            for constraint in budget_constraints(
                "drf_llm_keys_apikey", "budget_limit", "budget_period", optional=True
            )
        ),
        migrations.AddConstraint(
            model_name="apikey",
            constraint=check_constraint(
                models.Q(max_concurrent__isnull=True) | models.Q(max_concurrent__gte=1),
                "drf_llm_keys_apikey_max_concurrent",
            ),
        ),
        *(
            migrations.AddConstraint(model_name="ownerbudget", constraint=constraint)
            for constraint in budget_constraints(
                "drf_llm_keys_ownerbudget", "limit", "period", optional=False
            )
        ),
    ]
