//! Decoding the compound kinds: lists, tuples, flags, records (by name, or
//! by position from MessagePack), variants, results and maps, each element
//! charged to the budget before it is built.

use super::*;

pub(in crate::codec) fn decode_list<'de, A: SeqAccess<'de>>(
    mut seq: A,
    elem: &Type,
    trail: &mut Trail,
) -> Result<Vec<Val>, A::Error> {
    let mut items = Vec::with_capacity(capacity(seq.size_hint()));
    loop {
        let at = At::Index(items.len());
        match seq.next_element_seed(Decode::new(elem, at, trail))? {
            Some(item) => items.push(item),
            None => break,
        }
    }
    Ok(items)
}

#[cold]
pub(in crate::codec) fn wrong_length<E: de::Error>(
    trail: &mut Trail,
    ty: &Type,
    expected: usize,
    found: &dyn fmt::Display,
) -> E {
    let ty = Wit::short(ty);
    trail.fail(format!(
        "expected {expected} elements for {ty}, found {found}"
    ))
}

pub(in crate::codec) fn decode_tuple<'de, A: SeqAccess<'de>>(
    mut seq: A,
    tuple: &Tuple,
    ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let len = tuple.types().len();
    let mut items = Vec::with_capacity(len);
    for (i, elem) in tuple.types().enumerate() {
        let at = At::Index(i);
        match seq.next_element_seed(Decode::new(&elem, at, trail))? {
            Some(item) => items.push(item),
            None => return Err(wrong_length(trail, ty, len, &i)),
        }
    }
    if seq.next_element::<IgnoredAny>()?.is_some() {
        return Err(wrong_length(trail, ty, len, &"more"));
    }
    Ok(Val::Tuple(items))
}

pub(in crate::codec) fn decode_flags<'de, A: SeqAccess<'de>>(
    mut seq: A,
    flags: &Flags,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let mut set = Seen::new(flags.names().len());
    let mut i = 0;
    while let Some(name) = seq.next_element_seed(NameSeed {
        what: "a flag name",
        at: At::Index(i),
        trail,
    })? {
        let Some(bit) = flags.names().position(|flag| flag == name) else {
            let message = format!(
                "unknown flag `{name}`, {}",
                one_of(flags.names(), "the flags type has none")
            );
            trail.segments.push(Segment::Index(i));
            return Err(trail.fail(message));
        };
        set.insert(bit);
        i += 1;
    }
    // Declaration order, duplicates merged: the form wasmtime itself lifts.
    let names = flags.names().enumerate();
    let names = names.filter(|(bit, _)| set.contains(*bit));
    Ok(Val::Flags(names.map(|(_, name)| name.to_owned()).collect()))
}

pub(in crate::codec) fn decode_record<'de, A: MapAccess<'de>>(
    mut map: A,
    record: &Record,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let fields: Vec<Field<'_>> = record.fields().collect();
    trail.charge(record_cost(&fields))?;
    // Missing option fields stay `none`; missing others are reported below.
    let mut values: Vec<(String, Val)> = fields
        .iter()
        .map(|f| (f.name.to_owned(), Val::Option(None)))
        .collect();
    let mut seen = Seen::new(fields.len());
    while let Some(key) = map.next_key_seed(NameSeed {
        what: "a field name",
        at: At::Here,
        trail,
    })? {
        let Some(i) = fields.iter().position(|f| f.name == key) else {
            let names = fields.iter().map(|f| f.name);
            let expected = one_of(names, "the record has no fields");
            return Err(trail.fail(format!("unknown field `{key}`, {expected}")));
        };
        if !seen.insert(i) {
            return Err(trail.fail(format!("duplicate field `{key}`")));
        }
        let field = &fields[i];
        let at = At::Name(field.name);
        values[i].1 = map.next_value_seed(Decode::new(&field.ty, at, trail))?;
    }
    let absent = fields.iter().enumerate();
    let absent: Vec<&str> = absent
        .filter(|(i, f)| !seen.contains(*i) && !matches!(f.ty, Type::Option(_)))
        .map(|(_, f)| f.name)
        .collect();
    if !absent.is_empty() {
        return Err(trail.fail(missing("field", &absent)));
    }
    Ok(Val::Record(values))
}

/// A MessagePack record written by position (`rmp_serde::to_vec` of a struct).
pub(in crate::codec) fn decode_record_seq<'de, A: SeqAccess<'de>>(
    mut seq: A,
    record: &Record,
    ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let fields: Vec<Field<'_>> = record.fields().collect();
    trail.charge(record_cost(&fields))?;
    let mut values = Vec::with_capacity(fields.len());
    let mut absent = Vec::new();
    for field in record.fields() {
        let value = seq.next_element_seed(Decode::new(&field.ty, At::Name(field.name), trail))?;
        let value = match (value, &field.ty) {
            (Some(value), _) => value,
            (None, Type::Option(_)) => Val::Option(None),
            (None, _) => {
                absent.push(field.name);
                continue;
            }
        };
        values.push((field.name.to_owned(), value));
    }
    if !absent.is_empty() {
        return Err(trail.fail(missing("field", &absent)));
    }
    if seq.next_element::<IgnoredAny>()?.is_some() {
        let message = format!(
            "too many fields for {}, expected {}",
            Wit::short(ty),
            values.len()
        );
        return Err(trail.fail(message));
    }
    Ok(Val::Record(values))
}

pub(in crate::codec) fn decode_variant<'de, A: MapAccess<'de>>(
    mut map: A,
    variant: &Variant,
    ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let Some(key) = map.next_key_seed(NameSeed {
        what: "a case name",
        at: At::Here,
        trail,
    })?
    else {
        return Err(trail.fail(one_case(ty, "found none")));
    };
    let Some(case) = variant.cases().find(|case| case.name == key) else {
        return Err(trail.fail(unknown_case(variant, &key)));
    };
    let payload = decode_payload(&mut map, case.name, case.ty.as_ref(), trail)?;
    if map.next_key::<IgnoredAny>()?.is_some() {
        return Err(trail.fail(one_case(ty, "found more than one")));
    }
    Ok(Val::Variant(case.name.to_owned(), payload))
}

pub(in crate::codec) fn decode_result<'de, A: MapAccess<'de>>(
    mut map: A,
    result: &ResultType,
    ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let Some(key) = map.next_key_seed(NameSeed {
        what: "`ok` or `err`",
        at: At::Here,
        trail,
    })?
    else {
        return Err(trail.fail(one_case(ty, "found none")));
    };
    let (is_ok, name, side) = match &*key {
        "ok" | "Ok" => (true, "ok", result.ok()),
        "err" | "Err" => (false, "err", result.err()),
        _ => return Err(trail.fail(unknown_result_case(&key))),
    };
    let payload = decode_payload(&mut map, name, side.as_ref(), trail)?;
    if map.next_key::<IgnoredAny>()?.is_some() {
        return Err(trail.fail(one_case(ty, "found more than one")));
    }
    Ok(Val::Result(if is_ok { Ok(payload) } else { Err(payload) }))
}

/// The field names a `Val::Record` holds beside its values.
pub(in crate::codec) fn record_cost(fields: &[Field<'_>]) -> usize {
    let names: usize = fields.iter().map(|f| f.name.len()).sum();
    names + fields.len() * size_of::<String>()
}

pub(in crate::codec) fn one_case(ty: &Type, found: &str) -> String {
    format!("expected one case for {}, {found}", Wit::short(ty))
}

/// The value under a case key: the payload, or `null` for a case without one.
pub(in crate::codec) fn decode_payload<'de, A: MapAccess<'de>>(
    map: &mut A,
    case: &str,
    ty: Option<&Type>,
    trail: &mut Trail,
) -> Result<Option<Box<Val>>, A::Error> {
    let at = At::Name(case);
    match ty {
        Some(ty) => map
            .next_value_seed(Decode { ty, at, trail })
            .map(|v| Some(Box::new(v))),
        None => map.next_value_seed(NullSeed { case, trail }).map(|()| None),
    }
}

pub(in crate::codec) fn decode_map_object<'de, A: MapAccess<'de>>(
    mut map: A,
    key_ty: &Type,
    value_ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let mut entries = Vec::with_capacity(capacity(map.size_hint()));
    let at = At::Here;
    while let Some(key) = map.next_key_seed(Decode::new(key_ty, at, trail))? {
        let value = map.next_value_seed(Decode::new(value_ty, At::Key(&key), trail))?;
        entries.push((key, value));
    }
    Ok(Val::Map(entries))
}

pub(in crate::codec) fn decode_map_pairs<'de, A: SeqAccess<'de>>(
    mut seq: A,
    key: &Type,
    value: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let mut entries = Vec::with_capacity(capacity(seq.size_hint()));
    loop {
        let at = At::Index(entries.len());
        let pair = PairSeed {
            key,
            value,
            at,
            trail,
        };
        match seq.next_element_seed(pair)? {
            Some(entry) => entries.push(entry),
            None => break,
        }
    }
    Ok(Val::Map(entries))
}

/// Tracks which of `n` fields, parameters or flags have been seen.
pub(in crate::codec) struct Seen {
    pub(in crate::codec) small: u64,
    pub(in crate::codec) large: Vec<bool>,
}

impl Seen {
    pub(in crate::codec) fn new(n: usize) -> Self {
        let large = if n > 64 { vec![false; n] } else { Vec::new() };
        Seen { small: 0, large }
    }

    /// Marks `i` seen; false if it already was.
    pub(in crate::codec) fn insert(&mut self, i: usize) -> bool {
        let fresh = !self.contains(i);
        match self.large.get_mut(i) {
            Some(slot) => *slot = true,
            None => self.small |= 1 << i,
        }
        fresh
    }

    pub(in crate::codec) fn contains(&self, i: usize) -> bool {
        match self.large.get(i) {
            Some(slot) => *slot,
            None => self.small & (1 << i) != 0,
        }
    }
}
