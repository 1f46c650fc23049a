//! Schema and data: the sqlx migrations in `db/migrations/` and the idempotent seed.
//!
//! Seeding can run any number of times: missing `world` rows are added with random
//! numbers, rows outside the spec are removed, and the 12 fortunes are rewritten
//! byte-exact. [`reseed`] draws every `world` row anew (`lab db reset`).

use sqlx::PgPool;

/// The migrations, embedded at build time so the binaries need no files at run time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Number of `world` rows the spec asks for (ids 1..=10000).
pub const WORLD_ROWS: i32 = 10_000;

/// The spec's fortunes, byte-exact (rows 6 and 8 hold U+2014 EM DASH).
pub const FORTUNES: [(i32, &str); 12] = [
    (1, "fortune: No such file or directory"),
    (
        2,
        "A computer scientist is someone who fixes things that aren't broken.",
    ),
    (3, "After enough decimal places, nobody gives a damn."),
    (
        4,
        "A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1",
    ),
    (
        5,
        "A computer program does what you tell it to do, not what you want it to do.",
    ),
    (
        6,
        "Emacs is a nice operating system, but I prefer UNIX. \u{2014} Tom Christaensen",
    ),
    (7, "Any program that runs right is obsolete."),
    (
        8,
        "A list is only as strong as its weakest link. \u{2014} Donald Knuth",
    ),
    (9, "Feature: A bug with seniority."),
    (10, "Computers make very fast, very accurate mistakes."),
    (
        11,
        "<script>alert(\"This should not be displayed in a browser alert box.\");</script>",
    ),
    (12, "フレームワークのベンチマーク"),
];

const INSERT_MISSING_WORLDS: &str = "INSERT INTO world (id, randomnumber) \
     SELECT g, 1 + floor(random() * 10000)::int FROM generate_series(1, $1) AS g \
     ON CONFLICT (id) DO NOTHING";
const DELETE_EXTRA_WORLDS: &str = "DELETE FROM world WHERE id < 1 OR id > $1";
const REDRAW_WORLDS: &str = "UPDATE world SET randomnumber = 1 + floor(random() * 10000)::int";
const UPSERT_FORTUNE: &str = "INSERT INTO fortune (id, message) VALUES ($1, $2) \
     ON CONFLICT (id) DO UPDATE SET message = EXCLUDED.message";
const DELETE_EXTRA_FORTUNES: &str = "DELETE FROM fortune WHERE id < 1 OR id > 12";
const RESET_STATEMENT_STATS: &str = "DO $$ BEGIN \
     PERFORM pg_stat_statements_reset(); \
     EXCEPTION WHEN OTHERS THEN NULL; END $$";

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Brings the data to the spec's shape without disturbing rows that already conform.
pub async fn seed(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(DELETE_EXTRA_WORLDS)
        .bind(WORLD_ROWS)
        .execute(&mut *tx)
        .await?;
    sqlx::query(INSERT_MISSING_WORLDS)
        .bind(WORLD_ROWS)
        .execute(&mut *tx)
        .await?;
    sqlx::query(DELETE_EXTRA_FORTUNES).execute(&mut *tx).await?;
    for (id, message) in FORTUNES {
        sqlx::query(UPSERT_FORTUNE)
            .bind(id)
            .bind(message)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Seeds, then draws every `world.randomnumber` anew and clears pg_stat_statements: the
/// state of a freshly created database.
pub async fn reseed(pool: &PgPool) -> anyhow::Result<()> {
    seed(pool).await?;
    sqlx::query(REDRAW_WORLDS).execute(pool).await?;
    sqlx::query(RESET_STATEMENT_STATS).execute(pool).await?;
    Ok(())
}

/// What a server says about pg_stat_statements, the extension that counts the queries it
/// runs (verifiers such as TechEmpower's check the variants with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementStats {
    /// Named in `shared_preload_libraries`: loaded when the server started.
    pub preloaded: bool,
    /// Created in this database, so its view can be queried.
    pub created: bool,
    /// Installed on the server's machine (in `pg_available_extensions`).
    pub installable: bool,
}

pub async fn statement_stats(pool: &PgPool) -> anyhow::Result<StatementStats> {
    let preload: String = sqlx::query_scalar("SELECT current_setting('shared_preload_libraries')")
        .fetch_one(pool)
        .await?;
    let created: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')",
    )
    .fetch_one(pool)
    .await?;
    let installable: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements')",
    )
    .fetch_one(pool)
    .await?;
    Ok(StatementStats {
        preloaded: preload
            .split(',')
            .any(|l| l.trim().trim_matches('"') == "pg_stat_statements"),
        created,
        installable,
    })
}

/// Creates pg_stat_statements in this database if it is missing (a database migrated
/// while the module was not installed has none).
pub async fn create_statement_stats(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await?;
    Ok(())
}

/// Row counts, for `lab db status` and for checks that the seed happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contents {
    pub worlds: i64,
    pub fortunes: i64,
}

pub async fn contents(pool: &PgPool) -> anyhow::Result<Contents> {
    let worlds: i64 = sqlx::query_scalar("SELECT count(*) FROM world")
        .fetch_one(pool)
        .await?;
    let fortunes: i64 = sqlx::query_scalar("SELECT count(*) FROM fortune")
        .fetch_one(pool)
        .await?;
    Ok(Contents { worlds, fortunes })
}
