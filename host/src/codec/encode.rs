//! [`Val`] -> JSON or MessagePack, by WIT type: a [`Serialize`] that checks
//! every value against its type as it writes (the encoding's choices are
//! [`types`]'s), with `list<u8>` streamed as base64 text or as bin.

use super::*;

pub(super) fn encode<T: Serialize>(
    format: Format,
    value: &T,
    trail: &RefCell<Trail>,
) -> Result<Vec<u8>, CodecError> {
    let written = match format {
        Format::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        // Records are maps already; `_named` keeps any nested struct so too.
        Format::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
    };
    written.map_err(|cause| trail.take().into_error(None, || cause))
}

/// The recursive serializer: `val`, checked against `ty` as it goes.
pub(super) struct Encode<'a> {
    pub(super) ty: &'a Type,
    pub(super) val: &'a Val,
    pub(super) trail: &'a RefCell<Trail>,
}

impl<'a> Encode<'a> {
    /// A value inside this one, reporting into the same trail.
    pub(super) fn child<'b>(&self, ty: &'b Type, val: &'b Val) -> Encode<'b>
    where
        'a: 'b,
    {
        let trail = self.trail;
        Encode { ty, val, trail }
    }

    #[cold]
    pub(super) fn fail<E: ser::Error>(&self, message: String) -> E {
        let error = E::custom(&message);
        self.trail.borrow_mut().message = Some(message);
        error
    }

    /// Notes, while `error` unwinds, that it happened inside `segment`.
    #[cold]
    pub(super) fn at<E>(&self, segment: Segment, error: E) -> E {
        self.trail.borrow_mut().segments.push(segment);
        error
    }

    pub(super) fn mismatch<E: ser::Error>(&self) -> E {
        let message = format!(
            "cannot encode {} as {}",
            val_kind(self.val),
            Wit::short(self.ty)
        );
        self.fail(message)
    }
}

impl Serialize for Encode<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.ty, self.val) {
            (Type::Bool, Val::Bool(v)) => s.serialize_bool(*v),
            (Type::S8, Val::S8(v)) => s.serialize_i8(*v),
            (Type::U8, Val::U8(v)) => s.serialize_u8(*v),
            (Type::S16, Val::S16(v)) => s.serialize_i16(*v),
            (Type::U16, Val::U16(v)) => s.serialize_u16(*v),
            (Type::S32, Val::S32(v)) => s.serialize_i32(*v),
            (Type::U32, Val::U32(v)) => s.serialize_u32(*v),
            (Type::S64, Val::S64(v)) => s.serialize_i64(*v),
            (Type::U64, Val::U64(v)) => s.serialize_u64(*v),
            (Type::Float32, Val::Float32(v)) => match float_word(f64::from(*v), &s) {
                Some(word) => s.serialize_str(word),
                None => s.serialize_f32(*v),
            },
            (Type::Float64, Val::Float64(v)) => match float_word(*v, &s) {
                Some(word) => s.serialize_str(word),
                None => s.serialize_f64(*v),
            },
            (Type::Char, Val::Char(v)) => s.serialize_char(*v),
            (Type::String, Val::String(v)) => s.serialize_str(v),
            (Type::List(list), Val::List(items)) => self.list(s, list, items),
            (Type::FixedLengthList(list), Val::FixedLengthList(items)) => {
                self.elements(s, &list.ty(), items)
            }
            (Type::Tuple(tuple), Val::Tuple(items)) => self.tuple(s, tuple, items),
            (Type::Record(record), Val::Record(fields)) => self.record(s, record, fields),
            (Type::Variant(variant), Val::Variant(case, payload)) => {
                self.variant(s, variant, case, payload.as_deref())
            }
            (Type::Enum(_), Val::Enum(case)) => s.serialize_str(case),
            (Type::Option(option), Val::Option(value)) => match value {
                None => s.serialize_none(),
                Some(value) => s.serialize_some(&self.child(&option.ty(), value)),
            },
            (Type::Result(result), Val::Result(value)) => self.result(s, result, value),
            (Type::Flags(_), Val::Flags(names)) => s.collect_seq(names),
            (Type::Map(map), Val::Map(entries)) => self.map(s, &map.key(), &map.value(), entries),
            (
                Type::Own(_)
                | Type::Borrow(_)
                | Type::Future(_)
                | Type::Stream(_)
                | Type::ErrorContext,
                _,
            ) => Err(self.fail(unsupported(self.ty))),
            _ => Err(self.mismatch()),
        }
    }
}

/// The word for a float JSON cannot write as a number.
pub(super) fn float_word<S: Serializer>(v: f64, s: &S) -> Option<&'static str> {
    match s.is_human_readable() {
        true => types::float_word(v),
        false => None,
    }
}

impl<'a> Encode<'a> {
    pub(super) fn list<S: Serializer>(
        &self,
        s: S,
        list: &List,
        items: &'a [Val],
    ) -> Result<S::Ok, S::Error> {
        let elem = list.ty();
        if !matches!(elem, Type::U8) {
            return self.elements(s, &elem, items);
        }
        if let Some(i) = items.iter().position(|v| !matches!(v, Val::U8(_))) {
            let error = self.child(&elem, &items[i]).mismatch();
            return Err(self.at(Segment::Index(i), error));
        }
        if s.is_human_readable() {
            s.collect_str(&Base64Vals(items))
        } else {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|v| match v {
                    Val::U8(b) => Some(*b),
                    _ => None,
                })
                .collect();
            s.serialize_bytes(&bytes)
        }
    }

    pub(super) fn elements<S: Serializer>(
        &self,
        s: S,
        elem: &Type,
        items: &'a [Val],
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(items.len()))?;
        for (i, item) in items.iter().enumerate() {
            let item = self.child(elem, item);
            seq.serialize_element(&item)
                .map_err(|e| self.at(Segment::Index(i), e))?;
        }
        seq.end()
    }

    pub(super) fn tuple<S: Serializer>(
        &self,
        s: S,
        tuple: &Tuple,
        items: &'a [Val],
    ) -> Result<S::Ok, S::Error> {
        if tuple.types().len() != items.len() {
            return Err(self.mismatch());
        }
        let mut seq = s.serialize_tuple(items.len())?;
        for (i, (ty, item)) in tuple.types().zip(items).enumerate() {
            let item = self.child(&ty, item);
            seq.serialize_element(&item)
                .map_err(|e| self.at(Segment::Index(i), e))?;
        }
        seq.end()
    }

    pub(super) fn record<S: Serializer>(
        &self,
        s: S,
        record: &Record,
        fields: &'a [(String, Val)],
    ) -> Result<S::Ok, S::Error> {
        if record.fields().len() != fields.len() {
            return Err(self.mismatch());
        }
        let mut map = s.serialize_map(Some(fields.len()))?;
        for (field, (name, value)) in record.fields().zip(fields) {
            if field.name != name {
                let message = format!("expected field `{}`, found `{name}`", field.name);
                return Err(self.fail(message));
            }
            let value = self.child(&field.ty, value);
            map.serialize_entry(name.as_str(), &value)
                .map_err(|e| self.at(Segment::Name(name.clone()), e))?;
        }
        map.end()
    }

    pub(super) fn variant<S: Serializer>(
        &self,
        s: S,
        variant: &Variant,
        case: &str,
        payload: Option<&'a Val>,
    ) -> Result<S::Ok, S::Error> {
        let Some(found) = variant.cases().find(|c| c.name == case) else {
            return Err(self.fail(unknown_case(variant, case)));
        };
        match (found.ty, payload) {
            (None, None) => s.serialize_str(case),
            (Some(ty), Some(payload)) => self.single_entry(s, case, Some((&ty, payload))),
            _ => Err(self.mismatch()),
        }
    }

    pub(super) fn result<S: Serializer>(
        &self,
        s: S,
        result: &ResultType,
        value: &'a Result<Option<Box<Val>>, Option<Box<Val>>>,
    ) -> Result<S::Ok, S::Error> {
        let (case, ty, payload) = match value {
            Ok(payload) => ("ok", result.ok(), payload.as_deref()),
            Err(payload) => ("err", result.err(), payload.as_deref()),
        };
        match (ty, payload) {
            (None, None) => self.single_entry(s, case, None),
            (Some(ty), Some(payload)) => self.single_entry(s, case, Some((&ty, payload))),
            _ => Err(self.mismatch()),
        }
    }

    /// `{case: payload}`, with `null` for a case without a payload.
    pub(super) fn single_entry<S: Serializer>(
        &self,
        s: S,
        case: &str,
        payload: Option<(&Type, &Val)>,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        let written = match payload {
            None => map.serialize_entry(case, &()),
            Some((ty, val)) => map.serialize_entry(case, &self.child(ty, val)),
        };
        written.map_err(|e| self.at(Segment::Name(case.to_owned()), e))?;
        map.end()
    }

    pub(super) fn map<S: Serializer>(
        &self,
        s: S,
        key: &Type,
        value: &Type,
        entries: &'a [(Val, Val)],
    ) -> Result<S::Ok, S::Error> {
        if !types::map_is_object(key) {
            let mut seq = s.serialize_seq(Some(entries.len()))?;
            for (i, (k, v)) in entries.iter().enumerate() {
                let pair = (self.child(key, k), self.child(value, v));
                seq.serialize_element(&pair)
                    .map_err(|e| self.at(Segment::Index(i), e))?;
            }
            return seq.end();
        }
        let mut map = s.serialize_map(Some(entries.len()))?;
        for (k, v) in entries {
            let segment = || match k {
                Val::String(k) => Segment::Key(k.clone()),
                _ => Segment::Each,
            };
            map.serialize_entry(&self.child(key, k), &self.child(value, v))
                .map_err(|e| self.at(segment(), e))?;
        }
        map.end()
    }
}

/// A function's parameters as a map of name to value.
pub(super) struct EncodeParams<'a> {
    pub(super) params: &'a [(String, Type)],
    pub(super) vals: &'a [Val],
    pub(super) trail: &'a RefCell<Trail>,
}

impl Serialize for EncodeParams<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.params.len() != self.vals.len() {
            let message = format!(
                "expected {} parameter values, found {}",
                self.params.len(),
                self.vals.len()
            );
            let error = <S::Error as ser::Error>::custom(&message);
            self.trail.borrow_mut().message = Some(message);
            return Err(error);
        }
        let mut map = s.serialize_map(Some(self.params.len()))?;
        for ((name, ty), val) in self.params.iter().zip(self.vals) {
            let trail = self.trail;
            let value = Encode { ty, val, trail };
            map.serialize_entry(name.as_str(), &value)
                .map_err(|e| value.at(Segment::Name(name.clone()), e))?;
        }
        map.end()
    }
}

/// `list<u8>` as base64, written straight into the serializer in chunks.
pub(super) struct Base64Vals<'a>(pub(super) &'a [Val]);

impl fmt::Display for Base64Vals<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A multiple of 3, so only the last chunk carries padding.
        const CHUNK: usize = 768;
        let mut raw = [0u8; CHUNK];
        let mut text = [0u8; CHUNK / 3 * 4];
        for chunk in self.0.chunks(CHUNK) {
            for (byte, val) in raw.iter_mut().zip(chunk) {
                *byte = match val {
                    Val::U8(b) => *b,
                    _ => return Err(fmt::Error),
                };
            }
            let len = STANDARD
                .encode_slice(&raw[..chunk.len()], &mut text)
                .map_err(|_| fmt::Error)?;
            f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

pub(super) fn val_kind(val: &Val) -> &'static str {
    match val {
        Val::Bool(_) => "a bool",
        Val::S8(_) => "an s8",
        Val::U8(_) => "a u8",
        Val::S16(_) => "an s16",
        Val::U16(_) => "a u16",
        Val::S32(_) => "an s32",
        Val::U32(_) => "a u32",
        Val::S64(_) => "an s64",
        Val::U64(_) => "a u64",
        Val::Float32(_) => "an f32",
        Val::Float64(_) => "an f64",
        Val::Char(_) => "a char",
        Val::String(_) => "a string",
        Val::List(_) => "a list",
        Val::FixedLengthList(_) => "a fixed-length list",
        Val::Map(_) => "a map",
        Val::Record(_) => "a record",
        Val::Tuple(_) => "a tuple",
        Val::Variant(..) => "a variant",
        Val::Enum(_) => "an enum",
        Val::Option(_) => "an option",
        Val::Result(_) => "a result",
        Val::Flags(_) => "flags",
        Val::Resource(_) => "a resource",
        Val::Future(_) => "a future",
        Val::Stream(_) => "a stream",
        Val::ErrorContext(_) => "an error context",
    }
}
