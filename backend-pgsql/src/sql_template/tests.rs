//! Tests of `sql_template`.

use super::*;

fn parse(sql: &str) -> SqlTemplate {
    match parse_template(sql) {
        Ok(t) => t,
        Err(e) => panic!("{sql}: unexpected error: {e}"),
    }
}

fn err(sql: &str) -> String {
    match parse_template(sql) {
        Ok(t) => panic!("{sql}: expected an error, got {t:?}"),
        Err(e) => e,
    }
}

#[test]
fn names_round_trip() {
    assert_eq!(Placeholder::ALL.len(), 10);
    for p in Placeholder::ALL {
        assert_eq!(Placeholder::from_name(p.name()), Some(*p));
    }
    assert_eq!(Placeholder::from_name("ClientId"), None);
    assert_eq!(Placeholder::from_name("nope"), None);
    assert_eq!(Placeholder::ClientId.to_string(), "${clientid}");
}

#[test]
fn available_placeholders_per_hook() {
    use Placeholder::*;
    let names = |h: HookPoint| {
        Placeholder::available_on(h)
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(HookPoint::ClientConnected),
        ["clientid", "username", "peerhost", "node"]
    );
    assert_eq!(
        names(HookPoint::ClientDisconnected),
        ["clientid", "username", "peerhost", "node"]
    );
    assert_eq!(
        names(HookPoint::SessionUnsubscribed),
        ["clientid", "topic", "qos", "username", "peerhost", "node"]
    );
    assert_eq!(Placeholder::available_on(HookPoint::MessagePublish).len(), 10);
    assert!(Placeholder::available_on(HookPoint::MessagePublish).contains(&Timestamp));
    assert_eq!(
        names(HookPoint::MessageAcked),
        [
            "clientid",
            "topic",
            "msgid",
            "qos",
            "retain",
            "payload",
            "timestamp",
            "username",
            "peerhost",
            "node"
        ]
    );
    assert_eq!(
        Placeholder::available_on(HookPoint::MessageDelivered),
        Placeholder::available_on(HookPoint::MessageAcked)
    );
    assert!(Placeholder::available_on(HookPoint::SessionCreated).is_empty());
    assert!(!Placeholder::available_on(HookPoint::ClientConnected).contains(&Topic));
}

#[test]
fn emqx_default_unsubscribe_statement() {
    let t = parse("delete from mqtt_acked where clientid = ${clientid} and topic = ${topic}");
    assert_eq!(t.sql, "delete from mqtt_acked where clientid = $1 and topic = $2");
    assert_eq!(t.params, [Placeholder::ClientId, Placeholder::Topic]);
    assert_eq!(
        t.original,
        "delete from mqtt_acked where clientid = ${clientid} and topic = ${topic}"
    );
}

#[test]
fn placeholder_reuse_keeps_its_number() {
    let t = parse(
        "insert into t (a, b, c) values (${topic}, ${clientid}, ${topic}) \
         on conflict (a) do update set b = ${clientid}, d = ${qos}",
    );
    assert_eq!(
        t.sql,
        "insert into t (a, b, c) values ($1, $2, $1) on conflict (a) do update set b = $2, d = $3"
    );
    assert_eq!(
        t.params,
        [Placeholder::Topic, Placeholder::ClientId, Placeholder::Qos]
    );
    let values = t.values(|p| SqlValue::Text(p.name().to_string()));
    assert_eq!(
        values,
        [
            SqlValue::Text("topic".into()),
            SqlValue::Text("clientid".into()),
            SqlValue::Text("qos".into())
        ]
    );
}

#[test]
fn statements_without_placeholders_are_unchanged() {
    let t = parse("select 1");
    assert_eq!(t.sql, "select 1");
    assert!(t.params.is_empty());
}

#[test]
fn casts_and_adjacent_text() {
    let t = parse("select ${qos}::int, ${payload}||'x', now() - interval '1 s'");
    assert_eq!(t.sql, "select $1::int, $2||'x', now() - interval '1 s'");
    // A placeholder glued to an identifier or a number is kept apart from it.
    let t = parse("select a${qos}, ${qos}1, ${qos}${topic}");
    assert_eq!(t.sql, "select a $1, $1 1, $1 $2");
    assert_eq!(t.params, [Placeholder::Qos, Placeholder::Topic]);
}

#[test]
fn quoted_text_without_placeholders_is_kept() {
    let t = parse(
        "insert into \"My Table\" values ('it''s $1 and $$', E'a\\'b $x \\\\', ${clientid}, \"a\"\"b\")",
    );
    assert_eq!(
        t.sql,
        "insert into \"My Table\" values ('it''s $1 and $$', E'a\\'b $x \\\\', $1, \"a\"\"b\")"
    );
    assert_eq!(t.params, [Placeholder::ClientId]);
}

#[test]
fn comments_are_left_alone() {
    let t = parse("select ${clientid} -- ${bogus} $1 'x\n, 1 /* ${x} /* nested $$ */ ' */ + ${qos}");
    assert_eq!(
        t.sql,
        "select $1 -- ${bogus} $1 'x\n, 1 /* ${x} /* nested $$ */ ' */ + $2"
    );
    assert_eq!(t.params, [Placeholder::ClientId, Placeholder::Qos]);
    assert!(err("select 1 /* open").contains("unterminated comment"));
}

#[test]
fn dollar_inside_identifiers_is_kept() {
    let t = parse("select a$b, c$1, d$$ from t$x where x = ${topic}");
    assert_eq!(t.sql, "select a$b, c$1, d$$ from t$x where x = $1");
}

#[test]
fn unknown_placeholder_is_refused() {
    let e = err("select ${clientId}");
    assert!(e.starts_with("unknown placeholder `${clientId}`"), "{e}");
    assert!(e.contains("${clientid}, ${username}"), "{e}");
    assert!(err("select ${}").starts_with("unknown placeholder `${}`"));
    assert!(err("select ${ clientid }").starts_with("unknown placeholder"));
}

#[test]
fn unclosed_placeholder_is_refused() {
    let e = err("select ${clientid");
    assert!(e.contains("`${` without a closing `}`"), "{e}");
}

#[test]
fn placeholder_inside_quotes_is_refused() {
    for sql in [
        "select * from t where c = '${clientid}'",
        "select * from t where c = 'it''s ${clientid}'",
        "select * from t where c = 'a' || 'b${clientid}c'",
        "select \"${clientid}\" from t",
        "select E'\\'${clientid}'",
    ] {
        let e = err(sql);
        assert!(
            e.contains("placeholders are bind parameters: write ${clientid} without quotes"),
            "{sql}: {e}"
        );
    }
    let e = err("select '${topic}'");
    assert!(e.contains("write ${topic} without quotes"), "{e}");
}

#[test]
fn positional_parameters_are_refused() {
    let e = err("select * from t where a = $1 and b = ${clientid}");
    assert!(e.contains("`$1`"), "{e}");
    assert!(e.contains("positional parameters"), "{e}");
    assert!(err("select ($12)").contains("`$12`"));
}

#[test]
fn dollar_quoting_is_refused() {
    let e = err("select $$ ${clientid} $$");
    assert!(
        e.contains("dollar-quoted strings (`$$`) are not supported"),
        "{e}"
    );
    let e = err("select $tag$x$tag$");
    assert!(e.contains("`$tag$`"), "{e}");
}

#[test]
fn unterminated_quotes_are_refused() {
    assert!(err("select 'abc").contains("unterminated string literal"));
    assert!(err("select \"abc").contains("unterminated quoted identifier"));
}

#[test]
fn injection_attempt_stays_a_bind_value() {
    let t = parse("insert into t values (${clientid})");
    assert_eq!(t.sql, "insert into t values ($1)");
    assert_eq!(t.params, [Placeholder::ClientId]);
    let evil = "x'); drop table t; --";
    let values = t.values(|_| SqlValue::Text(evil.to_string()));
    assert_eq!(values.len(), 1);
    for ty in [Type::TEXT, Type::VARCHAR, Type::UNKNOWN] {
        let mut buf = BytesMut::new();
        assert!(matches!(values[0].to_sql_checked(&ty, &mut buf), Ok(IsNull::No)));
        assert_eq!(&buf[..], evil.as_bytes());
    }
    // The statement text never changes with the value.
    assert!(!t.sql.contains("drop"));
}

fn enc(v: &SqlValue, ty: Type) -> Result<Vec<u8>, String> {
    let mut buf = BytesMut::new();
    match v.to_sql_checked(&ty, &mut buf) {
        Ok(IsNull::No) => Ok(buf.to_vec()),
        Ok(IsNull::Yes) => Err("NULL".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn native<T: ToSql>(v: T, ty: Type) -> Vec<u8> {
    let mut buf = BytesMut::new();
    match v.to_sql_checked(&ty, &mut buf) {
        Ok(IsNull::No) => buf.to_vec(),
        Ok(IsNull::Yes) => panic!("native encoding gave NULL"),
        Err(e) => panic!("native encoding failed: {e}"),
    }
}

fn enc_err(v: &SqlValue, ty: Type) -> String {
    match enc(v, ty) {
        Ok(b) => panic!("{v:?}: expected an error, got {b:?}"),
        Err(e) => e,
    }
}

#[test]
fn accepts_every_type() {
    for ty in [
        Type::INT4,
        Type::TEXT,
        Type::NUMERIC,
        Type::INET,
        Type::TEXT_ARRAY,
    ] {
        assert!(<SqlValue as ToSql>::accepts(&ty));
    }
}

#[test]
fn null_is_null_for_every_type() {
    for ty in [
        Type::INT2,
        Type::TEXT,
        Type::BYTEA,
        Type::BOOL,
        Type::TIMESTAMP,
        Type::NUMERIC,
    ] {
        let mut buf = BytesMut::new();
        assert!(matches!(
            SqlValue::Null.to_sql_checked(&ty, &mut buf),
            Ok(IsNull::Yes)
        ));
        assert!(buf.is_empty());
    }
}

#[test]
fn integers() {
    assert_eq!(enc(&SqlValue::Int(7), Type::INT2), Ok(native(7i16, Type::INT2)));
    assert_eq!(enc(&SqlValue::Int(-7), Type::INT4), Ok(native(-7i32, Type::INT4)));
    assert_eq!(
        enc(&SqlValue::Int(1 << 40), Type::INT8),
        Ok(native(1i64 << 40, Type::INT8))
    );
    assert_eq!(
        enc(&SqlValue::Text("42".into()), Type::INT4),
        Ok(native(42i32, Type::INT4))
    );
    assert_eq!(
        enc(&SqlValue::Text(" 42 ".into()), Type::INT8),
        Ok(native(42i64, Type::INT8))
    );
    assert_eq!(
        enc(&SqlValue::Bool(true), Type::INT4),
        Ok(native(1i32, Type::INT4))
    );
    assert_eq!(
        enc(&SqlValue::Bool(false), Type::INT2),
        Ok(native(0i16, Type::INT2))
    );
    let e = enc_err(&SqlValue::Int(70000), Type::INT2);
    assert!(e.contains("70000 is out of range") && e.contains("int2"), "{e}");
    let e = enc_err(&SqlValue::Int(1 << 40), Type::INT4);
    assert!(e.contains("out of range") && e.contains("int4"), "{e}");
    let e = enc_err(&SqlValue::Text("abc".into()), Type::INT4);
    assert!(e.contains("`abc`") && e.contains("not an integer"), "{e}");
    let e = enc_err(&SqlValue::Bytes(bytes::Bytes::from_static(b"1")), Type::INT4);
    assert!(e.contains("binary value") && e.contains("int4"), "{e}");
}

#[test]
fn text_types() {
    for ty in [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME, Type::UNKNOWN] {
        assert_eq!(
            enc(&SqlValue::Text("héllo".into()), ty.clone()),
            Ok(native("héllo", ty.clone()))
        );
        assert_eq!(
            enc(&SqlValue::Int(-12), ty.clone()),
            Ok(native("-12", ty.clone()))
        );
        assert_eq!(
            enc(&SqlValue::Bool(true), ty.clone()),
            Ok(native("true", ty.clone()))
        );
        assert_eq!(
            enc(&SqlValue::Bool(false), ty.clone()),
            Ok(native("false", ty.clone()))
        );
        assert_eq!(
            enc(&SqlValue::Bytes(bytes::Bytes::from_static(b"utf8")), ty.clone()),
            Ok(native("utf8", ty.clone()))
        );
    }
    let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    assert_eq!(
        enc(&SqlValue::Timestamp(t), Type::TEXT),
        Ok(native("2023-11-14T22:13:20.123000Z", Type::TEXT))
    );
    let e = enc_err(
        &SqlValue::Bytes(bytes::Bytes::from_static(&[0xff, 0xfe])),
        Type::TEXT,
    );
    assert!(
        e.contains("not UTF-8") && e.contains("text") && e.contains("bytea"),
        "{e}"
    );
}

#[test]
fn bytea() {
    let raw: &[u8] = &[0, 1, 0xff];
    assert_eq!(
        enc(&SqlValue::Bytes(bytes::Bytes::from_static(raw)), Type::BYTEA),
        Ok(native(raw, Type::BYTEA))
    );
    assert_eq!(
        enc(&SqlValue::Text("ab".into()), Type::BYTEA),
        Ok(native(&b"ab"[..], Type::BYTEA))
    );
    let e = enc_err(&SqlValue::Int(1), Type::BYTEA);
    assert!(
        e.contains("cannot bind an integer to a parameter of type bytea"),
        "{e}"
    );
}

#[test]
fn booleans() {
    assert_eq!(
        enc(&SqlValue::Bool(true), Type::BOOL),
        Ok(native(true, Type::BOOL))
    );
    assert_eq!(enc(&SqlValue::Int(0), Type::BOOL), Ok(native(false, Type::BOOL)));
    assert_eq!(enc(&SqlValue::Int(1), Type::BOOL), Ok(native(true, Type::BOOL)));
    assert!(enc_err(&SqlValue::Int(2), Type::BOOL).contains("only 0 and 1"));
    assert!(enc_err(&SqlValue::Text("true".into()), Type::BOOL).contains("type bool"));
}

#[test]
fn floats() {
    assert_eq!(
        enc(&SqlValue::Int(3), Type::FLOAT4),
        Ok(native(3f32, Type::FLOAT4))
    );
    assert_eq!(
        enc(&SqlValue::Int(-3), Type::FLOAT8),
        Ok(native(-3f64, Type::FLOAT8))
    );
    assert!(enc_err(&SqlValue::Text("3".into()), Type::FLOAT8).contains("float8"));
}

#[test]
fn timestamps() {
    let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    for ty in [Type::TIMESTAMP, Type::TIMESTAMPTZ] {
        assert_eq!(
            enc(&SqlValue::Timestamp(t), ty.clone()),
            Ok(native(t, ty.clone()))
        );
        assert_eq!(
            enc(&SqlValue::Int(1_700_000_000), ty.clone()),
            Ok(native(
                UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                ty.clone()
            ))
        );
        assert_eq!(
            enc(&SqlValue::Int(-86400), ty.clone()),
            Ok(native(UNIX_EPOCH - Duration::from_secs(86400), ty.clone()))
        );
    }
    assert!(enc_err(&SqlValue::Text("2024-01-01".into()), Type::TIMESTAMP).contains("timestamp"));
}

#[test]
fn json() {
    let doc = r#"{"a": [1, 2]}"#;
    assert_eq!(
        enc(&SqlValue::Text(doc.into()), Type::JSON),
        Ok(doc.as_bytes().to_vec())
    );
    let mut jsonb = vec![1u8];
    jsonb.extend_from_slice(doc.as_bytes());
    assert_eq!(enc(&SqlValue::Text(doc.into()), Type::JSONB), Ok(jsonb.clone()));
    assert_eq!(
        enc(
            &SqlValue::Bytes(bytes::Bytes::copy_from_slice(doc.as_bytes())),
            Type::JSONB
        ),
        Ok(jsonb)
    );
    assert!(enc_err(&SqlValue::Int(1), Type::JSON).contains("type json"));
}

#[test]
fn unsupported_types_are_named() {
    let e = enc_err(&SqlValue::Int(1), Type::NUMERIC);
    assert!(e.contains("parameters of type numeric are not supported"), "{e}");
    assert!(e.contains("::int"), "{e}");
    let e = enc_err(&SqlValue::Text("1.2.3.4".into()), Type::INET);
    assert!(e.contains("type inet"), "{e}");
}
