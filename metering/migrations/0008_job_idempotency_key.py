from django.db import migrations, models

# Jobs are many and written all the time: the unique index is built without blocking writes.
INDEX = "job_idempotency_key_unique"


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("metering", "0007_job_closed_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="idempotency_key",
            field=models.CharField(blank=True, editable=False, max_length=255, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="request_fingerprint",
            field=models.CharField(blank=True, editable=False, max_length=64, null=True),
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[
                # A build that failed half-way leaves an invalid index of that name: drop it.
                migrations.RunSQL(
                    f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}", migrations.RunSQL.noop
                ),
                migrations.RunSQL(
                    f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON metering_job"
                    " (idempotency_key) WHERE idempotency_key IS NOT NULL",
                    f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}",
                ),
            ],
            state_operations=[
                migrations.AddConstraint(
                    model_name="job",
                    constraint=models.UniqueConstraint(
                        condition=models.Q(("idempotency_key__isnull", False)),
                        fields=("idempotency_key",),
                        name=INDEX,
                    ),
                ),
            ],
        ),
    ]
