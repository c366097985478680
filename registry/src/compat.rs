//! Compatibility levels and checks, with Confluent's semantics on top of apache-avro's
//! schema resolution rules.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;

/// A subject's (or the registry's) compatibility rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    /// (new schema must read old data, old schema must read new data)
    fn directions(self) -> (bool, bool) {
        match self {
            Level::None => (false, false),
            Level::Backward | Level::BackwardTransitive => (true, false),
            Level::Forward | Level::ForwardTransitive => (false, true),
            Level::Full | Level::FullTransitive => (true, true),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            _ => return Err(()),
        })
    }
}

/// Whether `reader` can read everything `writer` wrote. Confluent (Java Avro) refuses what
/// apache-avro calls partial compatibility (missing enum symbols, partly overlapping unions).
fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    // The reader's aliases on named types first, as Java Avro applies them.
    let writer = crate::aliases::apply_reader_aliases(writer, reader)?;
    match SchemaCompatibility::can_read(&writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => {
            Err("reading may fail for some values (enum symbols or union branches missing)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Check `new` against a subject's previous schemas (oldest first) under `level`.
/// Returns the reasons it is incompatible, if any.
pub fn check(level: Level, new: &Schema, previous: &[(i32, Schema)]) -> Result<(), Vec<String>> {
    let (backward, forward) = level.directions();
    let against: &[(i32, Schema)] = if level.transitive() {
        previous
    } else {
        previous.last().map(std::slice::from_ref).unwrap_or(&[])
    };
    let mut problems = Vec::new();
    for (version, old) in against {
        if backward {
            if let Err(e) = can_read(old, new) {
                problems.push(format!(
                    "new schema cannot read data written with version {version}: {e}"
                ));
            }
        }
        if forward {
            if let Err(e) = can_read(new, old) {
                problems.push(format!(
                    "version {version} cannot read data written with the new schema: {e}"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .expect("test schema")
    }

    #[test]
    fn adding_a_field_with_a_default_is_backward_compatible() {
        let v1 = schema(r#"{"name":"a","type":"int"}"#);
        let v2 = schema(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""}"#);
        assert!(check(Level::Backward, &v2, &[(1, v1.clone())]).is_ok());
        assert!(check(Level::Full, &v2, &[(1, v1)]).is_ok());
    }

    #[test]
    fn adding_a_field_without_default_is_not_backward_but_is_forward_compatible() {
        let v1 = schema(r#"{"name":"a","type":"int"}"#);
        let v2 = schema(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
        let err = check(Level::Backward, &v2, &[(1, v1.clone())]).expect_err("incompatible");
        assert!(err[0].contains("version 1"), "{err:?}");
        assert!(check(Level::Forward, &v2, &[(1, v1.clone())]).is_ok());
        assert!(check(Level::None, &v2, &[(1, v1)]).is_ok());
    }

    #[test]
    fn transitive_levels_check_every_version_plain_levels_only_the_latest() {
        let v1 = schema(r#"{"name":"a","type":"int"}"#);
        let v2 = schema(r#"{"name":"b","type":"int","default":0}"#);
        // v3 drops the default of b: readable from v2 data (has b) but not from v1 data.
        let v3 = schema(r#"{"name":"b","type":"int"}"#);
        let history = [(1, v1), (2, v2)];
        assert!(check(Level::Backward, &v3, &history).is_ok());
        assert!(check(Level::BackwardTransitive, &v3, &history).is_err());
    }

    #[test]
    fn removing_an_enum_symbol_is_not_backward_compatible() {
        let e = |symbols: &str| {
            Schema::parse_str(&format!(
                r#"{{"type":"enum","name":"E","symbols":[{symbols}]}}"#
            ))
            .expect("enum")
        };
        assert!(check(Level::Backward, &e(r#""A""#), &[(1, e(r#""A","B""#))]).is_err());
        assert!(check(Level::Backward, &e(r#""A","B""#), &[(1, e(r#""A""#))]).is_ok());
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!(
            "full_transitive".parse::<Level>(),
            Ok(Level::FullTransitive)
        );
        assert!("sideways".parse::<Level>().is_err());
    }

    /// Named types: names must match, unless the reader lists the writer's full name as an
    /// alias (Java Avro's `SchemaCompatibility.schemaNameEquals`). The first five cases are
    /// Apache Avro's own (`TestSchemaCompatibilityNameMismatch`, the schemas of
    /// `TestSchemas`, and `test_simple_schema_promotion` of lang/py), the rest apply the
    /// alias rule to each kind of named type, nested, and to relative aliases.
    #[test]
    fn renamed_types_are_compatible_only_through_the_readers_aliases() {
        let backward_ok = |reader: &str, writer: &str| {
            check(
                Level::Backward,
                &Schema::parse_str(reader).expect("reader"),
                &[(1, Schema::parse_str(writer).expect("writer"))],
            )
        };
        let enum_ab =
            |name: &str| format!(r#"{{"type":"enum","name":"{name}","symbols":["A","B"]}}"#);
        let empty_record =
            |name: &str| format!(r#"{{"type":"record","name":"{name}","fields":[]}}"#);
        let dint_denum = |e: &str| {
            format!(
                r#"{{"type":"record","name":"Record1","fields":[{{"name":"a","type":"int","default":0}},{{"name":"b","type":{}}}]}}"#,
                enum_ab(e)
            )
        };
        // Apache Avro: TestSchemaCompatibilityNameMismatch (reader, writer): all incompatible.
        for (reader, writer) in [
            (enum_ab("Enum1"), enum_ab("Enum2")),
            (empty_record("Record2"), empty_record("Record1")),
            (
                r#"{"type":"fixed","name":"Fixed","size":4}"#.to_string(),
                r#"{"type":"fixed","name":"AnotherName","size":4}"#.to_string(),
            ),
            (dint_denum("Enum1"), dint_denum("Enum2")),
        ] {
            assert!(
                backward_ok(&reader, &writer).is_err(),
                "{reader} read {writer}"
            );
        }
        // Apache Avro lang/py: a reader record named "other" with alias "foo" reads "foo".
        assert!(backward_ok(
            r#"{"name":"other","type":"record","fields":[{"type":"int","name":"f1"}],"aliases":["foo"]}"#,
            r#"{"name":"foo","type":"record","fields":[{"type":"int","name":"f1"},{"type":"string","name":"f2"}]}"#,
        )
        .is_ok());

        // The same renames with the old name as an alias: compatible.
        let aliased_enum = |name: &str, alias: &str| {
            format!(
                r#"{{"type":"enum","name":"{name}","aliases":["{alias}"],"symbols":["A","B"]}}"#
            )
        };
        assert!(backward_ok(&aliased_enum("Enum1", "Enum2"), &enum_ab("Enum2")).is_ok());
        assert!(backward_ok(
            r#"{"type":"fixed","name":"Fixed","aliases":["AnotherName"],"size":4}"#,
            r#"{"type":"fixed","name":"AnotherName","size":4}"#
        )
        .is_ok());
        let nested = |e: &str| {
            format!(
                r#"{{"type":"record","name":"Record1","fields":[{{"name":"b","type":{{"type":"array","items":["null",{e}]}}}}]}}"#
            )
        };
        assert!(backward_ok(
            &nested(&aliased_enum("Enum1", "Enum2")),
            &nested(&enum_ab("Enum2"))
        )
        .is_ok());
        assert!(backward_ok(&nested(&enum_ab("Enum1")), &nested(&enum_ab("Enum2"))).is_err());

        // The issue's case: Reading renamed Reading2, relative alias, in a namespace.
        let reading = |name: &str, aliases: &str, ns: &str| {
            format!(
                r#"{{"type":"record","name":"{name}","namespace":"{ns}","aliases":[{aliases}],"fields":[{{"name":"value","type":"int"}}]}}"#
            )
        };
        let writer = reading("Reading", "", "io.switchyard");
        assert!(backward_ok(
            &reading("Reading2", r#""Reading""#, "io.switchyard"),
            &writer
        )
        .is_ok());
        assert!(backward_ok(
            &reading("Reading2", r#""io.switchyard.Reading""#, "io.switchyard"),
            &writer
        )
        .is_ok());
        assert!(
            backward_ok(&reading("Reading2", r#""Reading""#, "elsewhere"), &writer).is_err(),
            "a relative alias is in the reader's namespace: elsewhere.Reading is not the writer"
        );
        assert!(backward_ok(&reading("Reading2", "", "io.switchyard"), &writer).is_err());
        // FULL also needs the old schema to read the new: the old one has no alias.
        assert!(check(
            Level::Full,
            &Schema::parse_str(&reading("Reading2", r#""Reading""#, "io.switchyard")).expect("new"),
            &[(1, Schema::parse_str(&writer).expect("old"))],
        )
        .is_err());
    }
}
