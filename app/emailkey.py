"""The one normalisation of an email address into its key (DESIGN §1.2: one person, one key)."""

from __future__ import annotations


def email_key(email: str | None) -> str | None:
    """The key of an address: trimmed, then lower-cased with full Unicode case mapping.

    This is how Mailchimp identifies a member (its subscriber hash is the MD5 of the address
    lower-cased, Unicode-aware, like PHP's mb_strtolower), so two addresses are one contact
    exactly when they are one member: "İSTANBUL@…" and "i̇stanbul@…" share the key
    "i̇stanbul@…". The key is computed here only and stored in contacts.email_key, which the
    unique index and every join (queue, mirror, import) use. PostgreSQL's lower() must not
    compute it: it depends on the database's collation and maps İ to a plain i.
    """
    if email is None:
        return None
    key = email.strip().lower()
    return key or None
