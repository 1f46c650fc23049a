//! PostgreSQL's wire format as the pipelined client needs it: the frontend messages of the
//! four statements (encoded with `postgres-protocol`, the codec tokio-postgres itself uses)
//! and the few backend messages the client reads, parsed in place.
//!
//! Every backend message is a tag byte, a big-endian length that counts itself, and a body.
//! The client reads them straight out of its receive buffer instead of building an owned
//! message per frame: a `/queries?queries=20` answer is 80 messages, and all but the rows
//! are only counted.

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use postgres_protocol::{IsNull, Oid};

use crate::app::DatabaseError;
use crate::render::{Fortune, World};

const INT4: Oid = 23;
const INT4_ARRAY: Oid = 1007;
/// Parameters and results in binary: an `int4` is its 4 bytes, no text to print or parse.
const BINARY: i16 = 1;

/// A statement of `db::sql` with the name it is prepared under on every connection and its
/// parameter types (given to Parse, so PostgreSQL need not infer them).
pub struct Statement {
    pub name: &'static str,
    pub sql: &'static str,
    pub param_types: &'static [Oid],
}

pub const SELECT_WORLD: Statement = Statement {
    name: "world",
    sql: db::sql::SELECT_WORLD,
    param_types: &[INT4],
};
pub const SELECT_FORTUNES: Statement = Statement {
    name: "fortunes",
    sql: db::sql::SELECT_FORTUNES,
    param_types: &[],
};
pub const UPDATE_WORLDS_BULK: Statement = Statement {
    name: "update_bulk",
    sql: db::sql::UPDATE_WORLDS_BULK,
    param_types: &[INT4_ARRAY, INT4_ARRAY],
};
pub const UPDATE_WORLD_ONE: Statement = Statement {
    name: "update_one",
    sql: db::sql::UPDATE_WORLD_ONE,
    param_types: &[INT4, INT4],
};
pub const STATEMENTS: [&Statement; 4] = [
    &SELECT_WORLD,
    &SELECT_FORTUNES,
    &UPDATE_WORLDS_BULK,
    &UPDATE_WORLD_ONE,
];

/// A parameter value.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    Int4(i32),
    Int4Array(&'a [i32]),
}

/// Parse (and Sync): prepares `sql` as the statement `name`.
pub fn parse(name: &str, statement: &Statement, buf: &mut BytesMut) -> Result<(), DatabaseError> {
    frontend::parse(
        name,
        statement.sql,
        statement.param_types.iter().copied(),
        buf,
    )
    .map_err(encode_error)
}

/// Bind, Execute, an optional Close of the statement (for one parsed for this query only),
/// and Sync: one query with its own implicit transaction, as the spec asks.
pub fn execute(
    statement: &str,
    values: &[Value<'_>],
    close_after: bool,
    buf: &mut BytesMut,
) -> Result<(), DatabaseError> {
    frontend::bind(
        "",
        statement,
        [BINARY],
        values.iter(),
        |value, buf| {
            match value {
                Value::Int4(n) => buf.extend_from_slice(&n.to_be_bytes()),
                Value::Int4Array(items) => postgres_protocol::types::array_to_sql(
                    [postgres_protocol::types::ArrayDimension {
                        len: i32::try_from(items.len())?,
                        lower_bound: 1,
                    }],
                    INT4,
                    items.iter(),
                    |n, buf| {
                        buf.extend_from_slice(&n.to_be_bytes());
                        Ok(IsNull::No)
                    },
                    buf,
                )?,
            }
            Ok(IsNull::No)
        },
        [BINARY],
        buf,
    )
    .map_err(|error| match error {
        frontend::BindError::Conversion(e) => DatabaseError::Driver(format!("encoding: {e}")),
        frontend::BindError::Serialization(e) => encode_error(e),
    })?;
    frontend::execute("", 0, buf).map_err(encode_error)?;
    if close_after {
        frontend::close(b'S', statement, buf).map_err(encode_error)?;
    }
    frontend::sync(buf);
    Ok(())
}

fn encode_error(error: std::io::Error) -> DatabaseError {
    DatabaseError::Driver(format!("encoding a query: {error}"))
}

/// A backend message: its tag, its body, and its whole length in the buffer.
pub type Message<'a> = (u8, &'a [u8], usize);

/// The next complete message at the start of `buf`; `Ok(None)` when the message is not all
/// there yet.
pub fn next_message(buf: &[u8]) -> Result<Option<Message<'_>>, String> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length < 4 {
        return Err(format!(
            "malformed message from PostgreSQL (length {length})"
        ));
    }
    Ok(buf
        .get(5..1 + length)
        .map(|body| (header[0], body, 1 + length)))
}

/// How long the next message at the start of `buf` is, when only its header has arrived:
/// lets the reader make room for a large message in one step.
pub fn announced_length(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..5)?;
    Some(1 + u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize)
}

/// The message of an ErrorResponse (`M` field), with its SQLSTATE (`C`).
pub fn error_text(body: &[u8]) -> String {
    let (mut message, mut code) = ("", "");
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'M', text)) => message = std::str::from_utf8(text).unwrap_or("(not UTF-8)"),
            Some((b'C', text)) => code = std::str::from_utf8(text).unwrap_or(""),
            _ => {}
        }
    }
    format!("database error: {message} (SQLSTATE {code})")
}

/// The columns of a DataRow body; `None` for NULL.
fn columns(body: &[u8]) -> Result<Vec<Option<&[u8]>>, DatabaseError> {
    let bad = || DatabaseError::Driver("malformed DataRow from PostgreSQL".into());
    let count = i16::from_be_bytes(body.get(..2).ok_or_else(bad)?.try_into().unwrap());
    let mut rest = &body[2..];
    let mut columns = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let length = i32::from_be_bytes(rest.get(..4).ok_or_else(bad)?.try_into().unwrap());
        rest = &rest[4..];
        if length < 0 {
            columns.push(None);
        } else {
            let (value, tail) = rest.split_at_checked(length as usize).ok_or_else(bad)?;
            columns.push(Some(value));
            rest = tail;
        }
    }
    Ok(columns)
}

fn int4(column: Option<Option<&[u8]>>, index: usize) -> Result<i32, DatabaseError> {
    match column {
        Some(Some(&[a, b, c, d])) => Ok(i32::from_be_bytes([a, b, c, d])),
        _ => Err(DatabaseError::Driver(format!(
            "unexpected column {index}: not a non-null int4"
        ))),
    }
}

/// A `world` row (id, randomnumber), both `int4`, in binary.
pub fn world_row(body: &[u8]) -> Result<World, DatabaseError> {
    // The hot path: 2 columns of 4 bytes, read without building a column list.
    if let [0, 2, 0, 0, 0, 4, a, b, c, d, 0, 0, 0, 4, e, f, g, h] = *body {
        return Ok(World {
            id: i32::from_be_bytes([a, b, c, d]),
            random_number: i32::from_be_bytes([e, f, g, h]),
        });
    }
    let columns = columns(body)?;
    Ok(World {
        id: int4(columns.first().copied(), 0)?,
        random_number: int4(columns.get(1).copied(), 1)?,
    })
}

/// A `fortune` row (id `int4`, message `text`), in binary: the text is its UTF-8 bytes.
pub fn fortune_row(body: &[u8]) -> Result<Fortune, DatabaseError> {
    // The hot path: two columns, a 4-byte id and the text, read without a column list.
    if let [0, 2, 0, 0, 0, 4, a, b, c, d, l0, l1, l2, l3, ref text @ ..] = *body {
        if i32::from_be_bytes([l0, l1, l2, l3]) as usize == text.len() {
            let message = simdutf8::basic::from_utf8(text)
                .map_err(|_| DatabaseError::Driver("unexpected column 1: not UTF-8".into()))?;
            return Ok(Fortune {
                id: i32::from_be_bytes([a, b, c, d]),
                message: message.to_owned(),
            });
        }
    }
    let columns = columns(body)?;
    let message = match columns.get(1) {
        Some(Some(text)) => String::from_utf8(text.to_vec())
            .map_err(|_| DatabaseError::Driver("unexpected column 1: not UTF-8".into()))?,
        _ => {
            return Err(DatabaseError::Driver(
                "unexpected column 1: not text".into(),
            ))
        }
    };
    Ok(Fortune {
        id: int4(columns.first().copied(), 0)?,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_row(columns: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = (columns.len() as i16).to_be_bytes().to_vec();
        for column in columns {
            match column {
                Some(value) => {
                    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                    body.extend_from_slice(value);
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body
    }

    #[test]
    fn rows_decode_and_bad_rows_are_errors_not_panics() {
        let row = data_row(&[Some(&7i32.to_be_bytes()), Some(&1234i32.to_be_bytes())]);
        let world = world_row(&row).unwrap();
        assert_eq!((world.id, world.random_number), (7, 1234));
        let fortune = data_row(&[Some(&3i32.to_be_bytes()), Some("フレームワーク".as_bytes())]);
        assert_eq!(fortune_row(&fortune).unwrap().message, "フレームワーク");
        for bad in [
            data_row(&[Some(&7i32.to_be_bytes()), None]),
            data_row(&[Some(b"abc")]),
            vec![0, 2, 0, 0, 0, 9, 1],
            vec![],
        ] {
            assert!(world_row(&bad).is_err(), "{bad:?}");
            assert!(fortune_row(&bad).is_err(), "{bad:?}");
        }
        let not_utf8 = data_row(&[Some(&3i32.to_be_bytes()), Some(&[0xff, 0xfe])]);
        assert!(fortune_row(&not_utf8).is_err());
    }

    #[test]
    fn framing_waits_for_whole_messages() {
        let message = [b'Z', 0, 0, 0, 5, b'I', b'C'];
        assert_eq!(next_message(&message[..4]).unwrap(), None);
        assert_eq!(next_message(&message[..5]).unwrap(), None);
        assert_eq!(announced_length(&message[..5]), Some(6));
        assert_eq!(next_message(&message).unwrap(), Some((b'Z', &b"I"[..], 6)));
        assert!(next_message(&[b'Z', 0, 0, 0, 3]).is_err());
        let error = b"SERROR\0C42P01\0Mrelation \"world\" does not exist\0\0";
        assert_eq!(
            error_text(error),
            "database error: relation \"world\" does not exist (SQLSTATE 42P01)"
        );
    }
}
