-- The two TechEmpower tables, exactly as the workload spec names them. `randomNumber`
-- is created unquoted, so PostgreSQL folds it to `randomnumber`.
CREATE TABLE IF NOT EXISTS world (
    id integer PRIMARY KEY,
    randomNumber integer NOT NULL
);

CREATE TABLE IF NOT EXISTS fortune (
    id integer PRIMARY KEY,
    message varchar(2048) NOT NULL
);
