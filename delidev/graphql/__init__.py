"""GraphQL transport (Strawberry): thin resolvers over ``delidev.services``."""
