//! Every SQL statement the servers run, defined once.
//!
//! Both database drivers (sqlx for the async variants, `postgres` for the blocking ones)
//! prepare these strings; nothing else in the workspace writes SQL for a request.

/// One `world` row by id (`/db`, `/queries`, and the read half of `/updates`).
pub const SELECT_WORLD: &str = "SELECT id, randomnumber FROM world WHERE id = $1";

/// Every fortune, unordered: the spec sorts them in memory, after adding one row.
pub const SELECT_FORTUNES: &str = "SELECT id, message FROM fortune";

/// All of an `/updates` request's writes in one statement. The ids arrive sorted so that
/// concurrent requests lock rows in the same order and cannot deadlock; the statement
/// avoids the word SELECT, as the TechEmpower rules ask.
pub const UPDATE_WORLDS_BULK: &str = "UPDATE world SET randomnumber = v.r \
     FROM unnest($1::int[], $2::int[]) AS v(i, r) WHERE world.id = v.i";

/// One row's write, for the workshop that compares row-by-row updates with the bulk one.
pub const UPDATE_WORLD_ONE: &str = "UPDATE world SET randomnumber = $2 WHERE id = $1";

/// The cheapest round trip, for `/health`.
pub const PING: &str = "SELECT 1";
