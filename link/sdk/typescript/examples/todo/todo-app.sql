-- Schema of the example TODO app (idempotent: run it as often as you like).
CREATE NAMESPACE IF NOT EXISTS app;
CREATE USER TABLE IF NOT EXISTS app.todos (
    id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(),
    title TEXT NOT NULL,
    completed BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMP NOT NULL DEFAULT NOW()
) FLUSH ROW_THRESHOLD 1000;
