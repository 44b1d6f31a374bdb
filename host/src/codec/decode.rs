//! JSON or MessagePack -> [`Val`], by WIT type: the root seeds, the two
//! formats' readers and their errors, and the visitor of one value. Lists,
//! records and the other compound kinds are in [`compound`], parameters and
//! the small seeds they use in [`params`]. Nothing here allocates past the
//! [`Trail`]'s budget or recurses past its depth.

use super::*;

mod compound;
mod params;

pub(super) use compound::*;
pub(super) use params::*;

/// Accepts base64 with or without padding; [`STANDARD`] writes it padded.
pub(super) const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// 2^53: past it not every integer is a float, so an integral float may be
/// another integer than the one its writer meant.
pub(super) const MAX_EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

/// A root seed that reports into a caller-owned [`Trail`].
pub(super) trait RootSeed {
    type Value;
    fn deserialize_in<'de, D: de::Deserializer<'de>>(
        self,
        de: D,
        trail: &mut Trail,
    ) -> Result<Self::Value, D::Error>;
}

pub(super) struct ValueRoot<'t>(pub(super) &'t Type);
pub(super) struct ParamsRoot<'p> {
    pub(super) params: &'p [(String, Type)],
    /// Top-level `list<u8>` parameters as [`Arg::Bytes`].
    pub(super) bytes: bool,
}

impl RootSeed for ValueRoot<'_> {
    type Value = Val;
    fn deserialize_in<'de, D: de::Deserializer<'de>>(
        self,
        de: D,
        trail: &mut Trail,
    ) -> Result<Val, D::Error> {
        let at = At::Here;
        Decode::new(self.0, at, trail).deserialize(de)
    }
}

impl RootSeed for ParamsRoot<'_> {
    type Value = Vec<Arg>;
    fn deserialize_in<'de, D: de::Deserializer<'de>>(
        self,
        de: D,
        trail: &mut Trail,
    ) -> Result<Vec<Arg>, D::Error> {
        let human = de.is_human_readable();
        de.deserialize_any(ParamsVisitor {
            params: self.params,
            bytes: self.bytes,
            trail,
            human,
        })
    }
}

pub(super) fn decode<S: RootSeed>(
    seed: S,
    root: Option<&str>,
    format: Format,
    bytes: &[u8],
    budget: usize,
) -> Result<S::Value, CodecError> {
    let mut trail = Trail::with_budget(budget);
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let value = seed
                .deserialize_in(&mut de, &mut trail)
                .map_err(|e| trail.into_error(root, || invalid(format, e)))?;
            de.end().map_err(|e| trailing_data(Some(&e)))?;
            Ok(value)
        }
        Format::MessagePack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            // rmp-serde's default of 1,024 levels overflows a 2 MiB stack
            // while skipping input; serde_json stops at 128 too.
            de.set_max_depth(MAX_DEPTH);
            let value = seed
                .deserialize_in(&mut de, &mut trail)
                .map_err(|e| trail.into_error(root, || invalid(format, msgpack_cause(e))))?;
            msgpack_end(&mut de)?;
            Ok(value)
        }
    }
}

pub(super) fn invalid(format: Format, cause: impl fmt::Display) -> String {
    format!("invalid {}: {cause}", format.name())
}

pub(super) fn msgpack_cause(error: rmp_serde::decode::Error) -> String {
    use rmp_serde::decode::Error;
    match error {
        Error::InvalidMarkerRead(e) | Error::InvalidDataRead(e)
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            "unexpected end of data".to_owned()
        }
        Error::TypeMismatch(marker) => format!("unexpected marker {marker:?}"),
        Error::Utf8Error(_) => "string is not valid UTF-8".to_owned(),
        Error::DepthLimitExceeded => "nested too deeply".to_owned(),
        other => other.to_string(),
    }
}

pub(super) fn trailing_data(json: Option<&serde_json::Error>) -> CodecError {
    let message = match json {
        Some(e) => format!(
            "trailing data after the value at line {} column {}",
            e.line(),
            e.column()
        ),
        None => "trailing data after the value".to_owned(),
    };
    CodecError {
        path: String::new(),
        message,
    }
}

/// Fails unless the MessagePack input has been read to its end.
pub(super) fn msgpack_end<'de, R: rmp_serde::decode::ReadSlice<'de>>(
    de: &mut rmp_serde::Deserializer<R>,
) -> Result<(), CodecError> {
    use rmp_serde::decode::Error;
    match de::Deserialize::deserialize(&mut *de) {
        Err(Error::InvalidMarkerRead(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Ok(IgnoredAny) | Err(_) => Err(trailing_data(None)),
    }
}

/// Where a seed sits in its parent; turned into a [`Segment`] only when
/// the seed fails (so a structural error of the parent, such as a missing
/// `]`, is not blamed on an element that was never read).
#[derive(Clone, Copy)]
pub(super) enum At<'a> {
    Here,
    Name(&'a str),
    Index(usize),
    Key(&'a Val),
}

impl At<'_> {
    #[cold]
    pub(super) fn note<E>(self, trail: &mut Trail, error: E) -> E {
        let segment = match self {
            At::Here => return error,
            At::Name(name) => Segment::Name(name.to_owned()),
            At::Index(i) => Segment::Index(i),
            At::Key(Val::String(key)) => Segment::Key(key.clone()),
            At::Key(_) => Segment::Each,
        };
        trail.at(segment, error)
    }
}

/// The recursive seed: one value of type `ty`.
pub(super) struct Decode<'t, 'r> {
    pub(super) ty: &'t Type,
    pub(super) at: At<'t>,
    pub(super) trail: &'r mut Trail,
}

impl<'t, 'r> Decode<'t, 'r> {
    pub(super) fn new(ty: &'t Type, at: At<'t>, trail: &'r mut Trail) -> Self {
        Decode { ty, at, trail }
    }
}

impl<'de> DeserializeSeed<'de> for Decode<'_, '_> {
    type Value = Val;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Val, D::Error> {
        let Decode { ty, at, trail } = self;
        let result = match ty {
            Type::Option(option) => de.deserialize_option(OptionVisitor {
                inner: option.ty(),
                trail,
            }),
            Type::Own(_)
            | Type::Borrow(_)
            | Type::Future(_)
            | Type::Stream(_)
            | Type::ErrorContext => Err(trail.fail(unsupported(ty))),
            _ => {
                let human = de.is_human_readable();
                de.deserialize_any(ValueVisitor { ty, trail, human })
            }
        };
        // Every value decoded is one `Val` more for the host to hold.
        let result = result.and_then(|val| trail.charge(VAL_COST).map(|()| val));
        result.map_err(|e| at.note(trail, e))
    }
}

pub(super) struct OptionVisitor<'r> {
    pub(super) inner: Type,
    pub(super) trail: &'r mut Trail,
}

impl<'de> Visitor<'de> for OptionVisitor<'_> {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "null or {}", Wit::short(&self.inner))
    }

    fn visit_none<E: de::Error>(self) -> Result<Val, E> {
        Ok(Val::Option(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Val, E> {
        Ok(Val::Option(None))
    }

    fn visit_some<D: de::Deserializer<'de>>(self, de: D) -> Result<Val, D::Error> {
        let value = Decode::new(&self.inner, At::Here, self.trail).deserialize(de)?;
        Ok(Val::Option(Some(Box::new(value))))
    }
}

/// Rejects what a visitor does not accept, through the visitor's own
/// `reject` (so every message reads `expected .., found ..`).
macro_rules! reject {
    ($($kind:ident)*) => { $(reject!(@ $kind);)* };
    (@ bool) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Err(self.reject(Found::Bool(v)))
        }
    };
    (@ i64) => {
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Err(self.reject(Found::Signed(v)))
        }
    };
    (@ u64) => {
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Err(self.reject(Found::Unsigned(v)))
        }
    };
    (@ f64) => {
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Err(self.reject(Found::Float(v)))
        }
    };
    (@ str) => {
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Err(self.reject(Found::Str(v)))
        }
    };
    (@ bytes) => {
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Err(self.reject(Found::Bytes))
        }
    };
    (@ null) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(self.reject(Found::Null))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(self.reject(Found::Null))
        }
    };
    (@ seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(self.reject(Found::Seq))
        }
    };
    (@ map) => {
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(self.reject(Found::Map))
        }
    };
    (@ ext) => {
        fn visit_newtype_struct<D: de::Deserializer<'de>>(self, _: D) -> Result<Self::Value, D::Error> {
            Err(self.reject(Found::Extension))
        }
        fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(self.reject(Found::Enum))
        }
    };
}
pub(super) use reject;

/// Every type but `option` and the unsupported ones.
pub(super) struct ValueVisitor<'t, 'r> {
    pub(super) ty: &'t Type,
    pub(super) trail: &'r mut Trail,
    pub(super) human: bool,
}

impl ValueVisitor<'_, '_> {
    pub(super) fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let message = format!(
            "expected {}, found {}",
            Wit::short(self.ty),
            found.describe(self.human)
        );
        self.trail.fail(message)
    }

    pub(super) fn number<E: de::Error>(self, v: i128, found: Found<'_>) -> Result<Val, E> {
        match number(self.ty, v) {
            Numeric::Fits(val) => Ok(val),
            Numeric::OutOfRange(range) => {
                let found = found.describe(self.human);
                let ty = Wit::short(self.ty);
                Err(self
                    .trail
                    .fail(format!("{found} is out of range for {ty} ({range})")))
            }
            Numeric::WrongType => Err(self.reject(found)),
        }
    }

    pub(super) fn char<E: de::Error>(self, v: &str) -> Result<Val, E> {
        let mut chars = v.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(Val::Char(c)),
            _ => {
                let message = format!(
                    "expected char (a single character), found string {}",
                    Quoted(v)
                );
                Err(self.trail.fail(message))
            }
        }
    }

    pub(super) fn float_word<E: de::Error>(self, v: &str) -> Result<Val, E> {
        let x = match v {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => return Err(self.reject(Found::Str(v))),
        };
        Ok(match self.ty {
            Type::Float32 => Val::Float32(x as f32),
            _ => Val::Float64(x),
        })
    }

    pub(super) fn enum_case<E: de::Error>(self, cases: &Enum, v: &str) -> Result<Val, E> {
        if cases.names().any(|name| name == v) {
            return Ok(Val::Enum(v.to_owned()));
        }
        let expected = one_of(cases.names(), "it has none");
        let message = format!("unknown case `{v}` for enum, {expected}");
        Err(self.trail.fail(message))
    }

    pub(super) fn bare_case<E: de::Error>(self, variant: &Variant, v: &str) -> Result<Val, E> {
        match variant.cases().find(|case| case.name == v) {
            Some(case) => match case.ty {
                None => Ok(Val::Variant(v.to_owned(), None)),
                Some(ty) => Err(self.trail.fail(format!(
                    "case `{v}` needs a payload of type {}",
                    Wit::short(&ty)
                ))),
            },
            None => Err(self.trail.fail(unknown_case(variant, v))),
        }
    }

    pub(super) fn bare_result<E: de::Error>(self, result: &ResultType, v: &str) -> Result<Val, E> {
        let (is_ok, ty) = match v {
            "ok" | "Ok" => (true, result.ok()),
            "err" | "Err" => (false, result.err()),
            _ => return Err(self.trail.fail(unknown_result_case(v))),
        };
        match ty {
            None if is_ok => Ok(Val::Result(Ok(None))),
            None => Ok(Val::Result(Err(None))),
            Some(ty) => Err(self.trail.fail(format!(
                "case `{v}` needs a payload of type {}",
                Wit::short(&ty)
            ))),
        }
    }

    pub(super) fn base64<E: de::Error>(self, v: &str) -> Result<Val, E> {
        let bytes = base64_bytes(v, self.trail)?;
        self.bytes(&bytes)
    }

    /// A `list<u8>` as a `Val` per byte, if the budget allows.
    pub(super) fn bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Val, E> {
        self.trail.charge(bytes.len().saturating_mul(VAL_COST))?;
        Ok(bytes_val(bytes))
    }
}

impl<'de> Visitor<'de> for ValueVisitor<'_, '_> {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Wit::short(self.ty), f)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Val, E> {
        match self.ty {
            Type::Bool => Ok(Val::Bool(v)),
            _ => Err(self.reject(Found::Bool(v))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val, E> {
        self.number(v.into(), Found::Signed(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val, E> {
        self.number(v.into(), Found::Unsigned(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Val, E> {
        match self.ty {
            Type::Float64 => Ok(Val::Float64(v)),
            Type::Float32 if v.is_finite() && v.abs() > f64::from(f32::MAX) => {
                let found = Found::Float(v).describe(self.human);
                Err(self.trail.fail(format!("{found} is out of range for f32")))
            }
            Type::Float32 => Ok(Val::Float32(v as f32)),
            // Integral floats are integers to a JavaScript caller, exact up to 2^53.
            _ if v.fract() == 0.0 && v.abs() < 1e38 => {
                let fits = matches!(number(self.ty, v as i128), Numeric::Fits(_));
                if v.abs() > MAX_EXACT_FLOAT && fits {
                    let found = Found::Float(v).describe(self.human);
                    return Err(self.trail.fail(format!(
                        "{found} is past 2^53, where a float is not an exact integer: \
                         write the integer without a fraction or exponent"
                    )));
                }
                self.number(v as i128, Found::Float(v))
            }
            _ => Err(self.reject(Found::Float(v))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Val, E> {
        match self.ty {
            Type::String => {
                self.trail.charge(v.len())?;
                Ok(Val::String(v.to_owned()))
            }
            Type::Char => self.char(v),
            Type::Enum(cases) => self.enum_case(cases, v),
            Type::Variant(variant) => self.bare_case(variant, v),
            Type::Result(result) => self.bare_result(result, v),
            Type::List(list) if is_bytes(list) => self.base64(v),
            Type::Float32 | Type::Float64 => self.float_word(v),
            _ => Err(self.reject(Found::Str(v))),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Val, E> {
        match self.ty {
            Type::String => {
                self.trail.charge(v.len())?;
                Ok(Val::String(v))
            }
            _ => self.visit_str(&v),
        }
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Val, E> {
        match self.ty {
            Type::List(list) if is_bytes(list) => self.bytes(v),
            // rmp-serde hands over a string that is not UTF-8 as bytes.
            Type::String | Type::Char => match std::str::from_utf8(v) {
                Ok(text) => self.visit_str(text),
                Err(_) => {
                    let ty = Wit::short(self.ty);
                    Err(self.trail.fail(format!(
                        "expected {ty}, found a string that is not valid UTF-8"
                    )))
                }
            },
            _ => Err(self.reject(Found::Bytes)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Val, E> {
        Err(self.reject(Found::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Val, E> {
        Err(self.reject(Found::Null))
    }

    fn visit_some<D: de::Deserializer<'de>>(self, de: D) -> Result<Val, D::Error> {
        Decode::new(self.ty, At::Here, self.trail).deserialize(de)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Val, A::Error> {
        let trail = &mut *self.trail;
        match self.ty {
            Type::List(list) => decode_list(seq, &list.ty(), trail).map(Val::List),
            Type::FixedLengthList(list) => {
                let items = decode_list(seq, &list.ty(), trail)?;
                let len = list.len() as usize;
                if items.len() != len {
                    return Err(wrong_length(trail, self.ty, len, &items.len()));
                }
                Ok(Val::FixedLengthList(items))
            }
            Type::Tuple(tuple) => decode_tuple(seq, tuple, self.ty, trail),
            Type::Flags(flags) => decode_flags(seq, flags, trail),
            Type::Map(map) => decode_map_pairs(seq, &map.key(), &map.value(), trail),
            Type::Record(record) if !self.human => decode_record_seq(seq, record, self.ty, trail),
            _ => Err(self.reject(Found::Seq)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Val, A::Error> {
        let trail = &mut *self.trail;
        match self.ty {
            Type::Record(record) => decode_record(map, record, trail),
            Type::Variant(variant) => decode_variant(map, variant, self.ty, trail),
            Type::Result(result) => decode_result(map, result, self.ty, trail),
            Type::Map(m) => decode_map_object(map, &m.key(), &m.value(), trail),
            _ => Err(self.reject(Found::Map)),
        }
    }

    reject!(ext);
}

pub(super) enum Numeric {
    Fits(Val),
    OutOfRange(&'static str),
    WrongType,
}

/// `v` as a value of the numeric type `ty`, range-checked.
pub(super) fn number(ty: &Type, v: i128) -> Numeric {
    fn fit<T: TryFrom<i128>>(v: i128, val: fn(T) -> Val, range: &'static str) -> Numeric {
        match T::try_from(v) {
            Ok(x) => Numeric::Fits(val(x)),
            Err(_) => Numeric::OutOfRange(range),
        }
    }
    match ty {
        Type::U8 => fit(v, Val::U8, "0 to 255"),
        Type::U16 => fit(v, Val::U16, "0 to 65535"),
        Type::U32 => fit(v, Val::U32, "0 to 4294967295"),
        Type::U64 => fit(v, Val::U64, "0 to 18446744073709551615"),
        Type::S8 => fit(v, Val::S8, "-128 to 127"),
        Type::S16 => fit(v, Val::S16, "-32768 to 32767"),
        Type::S32 => fit(v, Val::S32, "-2147483648 to 2147483647"),
        Type::S64 => fit(v, Val::S64, "-9223372036854775808 to 9223372036854775807"),
        Type::Float32 => Numeric::Fits(Val::Float32(v as f32)),
        Type::Float64 => Numeric::Fits(Val::Float64(v as f64)),
        _ => Numeric::WrongType,
    }
}

/// Base64 text as bytes, charged to the budget before it is decoded.
pub(super) fn base64_bytes<E: de::Error>(v: &str, trail: &mut Trail) -> Result<Vec<u8>, E> {
    trail.charge(v.len() / 4 * 3)?;
    BASE64_LENIENT
        .decode(v)
        .map_err(|e| trail.fail(format!("invalid base64 for list<u8>: {e}")))
}

pub(super) fn bytes_val(bytes: &[u8]) -> Val {
    Val::List(bytes.iter().map(|b| Val::U8(*b)).collect())
}

pub(super) fn unknown_case(variant: &Variant, v: &str) -> String {
    let names = variant.cases().map(|case| case.name);
    format!(
        "unknown case `{v}` for variant, {}",
        one_of(names, "it has none")
    )
}

pub(super) fn unknown_result_case(v: &str) -> String {
    format!("unknown case `{v}` for result, expected `ok` or `err`")
}

pub(super) fn capacity(hint: Option<usize>) -> usize {
    hint.unwrap_or(0).min(MAX_PREALLOCATED)
}
