"""Who is calling: principals (and, in multi-user mode, tokens and OIDC)."""
