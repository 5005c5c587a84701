"""The ledger's invariants, checked in SQL over the whole ledger (DESIGN.md, "Money")."""

from __future__ import annotations

from django.db import connection

CHECKS: list[tuple[str, str]] = [
    (
        "entry {0} does not sum to zero (off by {1})",
        "SELECT entry_id, SUM(amount) FROM billing_journalline"
        " GROUP BY entry_id HAVING SUM(amount) <> 0",
    ),
    (
        "entry {0} moves grant {1} unevenly (off by {2})",
        "SELECT entry_id, grant_id, SUM(amount) FROM billing_journalline"
        " GROUP BY entry_id, grant_id HAVING SUM(amount) <> 0",
    ),
    (
        "account {0} caches balance {1} but its lines sum to {2}",
        "SELECT a.id, a.balance, COALESCE(l.total, 0) FROM billing_ledgeraccount a"
        " LEFT JOIN (SELECT account_id, SUM(amount) AS total FROM billing_journalline"
        " GROUP BY account_id) l ON l.account_id = a.id"
        " WHERE a.balance <> COALESCE(l.total, 0)",
    ),
    (
        "account {0} caches {2} of grant {1} but its lines sum to {3}",
        "SELECT COALESCE(b.account_id, l.account_id), COALESCE(b.grant_id, l.grant_id),"
        " COALESCE(b.balance, 0), COALESCE(l.total, 0) FROM billing_grantbalance b"
        " FULL OUTER JOIN (SELECT account_id, grant_id, SUM(amount) AS total"
        " FROM billing_journalline GROUP BY account_id, grant_id) l"
        " ON l.account_id = b.account_id AND l.grant_id = b.grant_id"
        " WHERE COALESCE(b.balance, 0) <> COALESCE(l.total, 0)",
    ),
    (
        "{0} account {1} is negative ({2})",
        "SELECT type, id, balance FROM billing_ledgeraccount"
        " WHERE type IN ('vlab', 'rsv') AND balance < 0",
    ),
    (
        "{0} account {1} holds a negative remainder of grant {2} ({3})",
        "SELECT a.type, a.id, b.grant_id, b.balance FROM billing_grantbalance b"
        " JOIN billing_ledgeraccount a ON a.id = b.account_id"
        " WHERE a.type IN ('vlab', 'rsv') AND b.balance < 0",
    ),
    (
        "grant {0} has more left ({1}) than it was granted ({2})",
        "SELECT g.id, SUM(b.balance), g.amount FROM billing_grant g"
        " JOIN billing_grantbalance b ON b.grant_id = g.id"
        " JOIN billing_ledgeraccount a ON a.id = b.account_id AND a.type <> 'sys'"
        " GROUP BY g.id, g.amount HAVING SUM(b.balance) > g.amount",
    ),
    (
        "all balances sum to {0}, not zero",
        "SELECT SUM(balance) FROM billing_ledgeraccount HAVING SUM(balance) <> 0",
    ),
]


def ledger_audit() -> list[str]:
    """Every broken invariant, as a sentence; an empty list means the ledger is sound."""
    problems: list[str] = []
    with connection.cursor() as cursor:
        for message, sql in CHECKS:
            cursor.execute(sql)
            problems += [message.format(*row) for row in cursor.fetchall()]
    return problems
