"""PostgreSQL access: the async pool, versioned migrations, one repository module per aggregate."""
