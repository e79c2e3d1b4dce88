"""Who may use a service: identities decided at the edge, scopes, ownership, the audit log (docs/security.md).

Shared by the prediction server and the registry, so neither imports the other.
"""
