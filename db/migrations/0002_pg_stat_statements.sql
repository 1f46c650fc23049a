-- Verifiers count the queries a request really makes with pg_stat_statements. The
-- extension is enabled where the server has it; a server without it still works.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_stat_statements is not available here: %', SQLERRM;
END
$$;
