"""Database guards for the ledger: every entry balances, and the journal is append-only."""

from django.db import migrations

BALANCED = """
CREATE FUNCTION billing_entry_balanced() RETURNS trigger AS $$
DECLARE
    unbalanced bigint;
BEGIN
    -- Lines are append-only, so if the lines each statement adds to an entry sum to zero,
    -- every entry does; the check reads only the new lines, never the table.
    SELECT entry_id INTO unbalanced
      FROM new_lines
     GROUP BY entry_id
    HAVING SUM(amount) <> 0
     LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not sum to zero', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- Statement level: the lines one statement adds are checked together.
CREATE TRIGGER billing_journalline_balanced
    AFTER INSERT ON billing_journalline
    REFERENCING NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION billing_entry_balanced();

CREATE FUNCTION billing_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_journalline_append_only
    BEFORE UPDATE OR DELETE ON billing_journalline
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_journalentry_append_only
    BEFORE UPDATE OR DELETE ON billing_journalentry
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();
"""

UNDO = """
DROP TRIGGER billing_journalentry_append_only ON billing_journalentry;
DROP TRIGGER billing_journalline_append_only ON billing_journalline;
DROP FUNCTION billing_append_only();
DROP TRIGGER billing_journalline_balanced ON billing_journalline;
DROP FUNCTION billing_entry_balanced();
"""


def open_accounts(apps, schema_editor):
    """The system account, and accounts for labs and projects made before the ledger existed."""
    LedgerAccount = apps.get_model("billing", "LedgerAccount")
    Lab = apps.get_model("accounts", "Lab")
    Project = apps.get_model("accounts", "Project")
    LedgerAccount.objects.get_or_create(
        type="sys",
        defaults={"id": 0, "uuid": "00000000-0000-0000-0000-000000000000", "name": "System"},
    )
    for lab in Lab.objects.all():
        LedgerAccount.objects.get_or_create(type="vlab", lab=lab, defaults={"name": lab.name})
    for project in Project.objects.all():
        for kind, name in [("proj", project.name), ("rsv", f"{project.name}/RESERVATION")]:
            LedgerAccount.objects.get_or_create(
                type=kind, project=project, defaults={"lab_id": project.lab_id, "name": name}
            )


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [
        migrations.RunSQL(BALANCED, UNDO),
        migrations.RunPython(open_accounts, migrations.RunPython.noop),
    ]
