"""The shared service layer: one module per aggregate, plain keyword-only async functions.

Both transports call these functions; nothing here knows about HTTP, Connect or GraphQL.
"""
