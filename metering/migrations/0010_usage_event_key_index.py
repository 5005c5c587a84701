from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Usage events are many and written all the time: build the index without blocking writes.
    atomic = False

    dependencies = [
        ("metering", "0009_service_help_texts"),
    ]

    operations = [
        # A build that failed half-way leaves an invalid index of that name: drop it first.
        migrations.RunSQL(
            "DROP INDEX CONCURRENTLY IF EXISTS usage_event_key", migrations.RunSQL.noop
        ),
        AddIndexConcurrently(
            model_name="usageevent",
            index=models.Index(
                condition=models.Q(("outcome", "accepted"), models.Q(("key_ref", ""), _negated=True)),
                fields=["project", "key_ref", "occurred_at"],
                name="usage_event_key",
            ),
        ),
    ]
