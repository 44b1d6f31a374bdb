//! Decoding a function's parameters (an object by name, an array by
//! position, or nothing) and the small seeds the decoders share: field
//! names, `null`, map pairs, and `list<u8>` straight to bytes.

use super::*;

/// A key or name from the input, borrowed from it when the format allows.
pub(in crate::codec) struct NameSeed<'a, 'r> {
    pub(in crate::codec) what: &'static str,
    pub(in crate::codec) at: At<'a>,
    pub(in crate::codec) trail: &'r mut Trail,
}

pub(in crate::codec) struct NameVisitor<'r> {
    pub(in crate::codec) what: &'static str,
    pub(in crate::codec) trail: &'r mut Trail,
    pub(in crate::codec) human: bool,
}

impl<'de> DeserializeSeed<'de> for NameSeed<'_, '_> {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let NameSeed { what, at, trail } = self;
        let human = de.is_human_readable();
        let result = de.deserialize_any(NameVisitor { what, trail, human });
        result.map_err(|e| at.note(trail, e))
    }
}

impl NameVisitor<'_> {
    pub(in crate::codec) fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let message = format!(
            "expected {}, found {}",
            self.what,
            found.describe(self.human)
        );
        self.trail.fail(message)
    }
}

impl<'de> Visitor<'de> for NameVisitor<'_> {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }

    reject!(bool i64 u64 f64 bytes null seq map ext);
}

/// The value of a case that has no payload: only `null` fits.
pub(in crate::codec) struct NullSeed<'c, 'r> {
    pub(in crate::codec) case: &'c str,
    pub(in crate::codec) trail: &'r mut Trail,
}

pub(in crate::codec) struct NullVisitor<'c, 'r> {
    pub(in crate::codec) case: &'c str,
    pub(in crate::codec) trail: &'r mut Trail,
    pub(in crate::codec) human: bool,
}

impl<'de> DeserializeSeed<'de> for NullSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        let NullSeed { case, trail } = self;
        let human = de.is_human_readable();
        let result = de.deserialize_any(NullVisitor { case, trail, human });
        result.map_err(|e| At::Name(case).note(trail, e))
    }
}

impl NullVisitor<'_, '_> {
    pub(in crate::codec) fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let found = found.describe(self.human);
        let message = format!(
            "case `{}` has no payload, expected null, found {found}",
            self.case
        );
        self.trail.fail(message)
    }
}

impl<'de> Visitor<'de> for NullVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    reject!(bool i64 u64 f64 str bytes seq map ext);
}

/// One `[key, value]` entry of a `map` written as an array of pairs.
pub(in crate::codec) struct PairSeed<'t, 'r> {
    pub(in crate::codec) key: &'t Type,
    pub(in crate::codec) value: &'t Type,
    pub(in crate::codec) at: At<'t>,
    pub(in crate::codec) trail: &'r mut Trail,
}

pub(in crate::codec) struct PairVisitor<'t, 'r> {
    pub(in crate::codec) key: &'t Type,
    pub(in crate::codec) value: &'t Type,
    pub(in crate::codec) trail: &'r mut Trail,
    pub(in crate::codec) human: bool,
}

impl<'de> DeserializeSeed<'de> for PairSeed<'_, '_> {
    type Value = (Val, Val);

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(Val, Val), D::Error> {
        let PairSeed {
            key,
            value,
            at,
            trail,
        } = self;
        let human = de.is_human_readable();
        let result = de.deserialize_any(PairVisitor {
            key,
            value,
            trail,
            human,
        });
        result.map_err(|e| at.note(trail, e))
    }
}

impl PairVisitor<'_, '_> {
    pub(in crate::codec) fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let message = format!(
            "expected a [key, value] pair, found {}",
            found.describe(self.human)
        );
        self.trail.fail(message)
    }
}

impl<'de> Visitor<'de> for PairVisitor<'_, '_> {
    type Value = (Val, Val);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [key, value] pair")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(Val, Val), A::Error> {
        let PairVisitor {
            key, value, trail, ..
        } = self;
        let key = seq.next_element_seed(Decode::new(key, At::Index(0), trail))?;
        let value = seq.next_element_seed(Decode::new(value, At::Index(1), trail))?;
        let (Some(key), Some(value)) = (key, value) else {
            return Err(
                trail.fail("expected a [key, value] pair, found a shorter array".to_owned())
            );
        };
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(trail.fail("expected a [key, value] pair, found a longer array".to_owned()));
        }
        Ok((key, value))
    }

    reject!(bool i64 u64 f64 str bytes null map ext);
}

/// A function's parameters: a map by name, an array by position, or null.
pub(in crate::codec) struct ParamsVisitor<'p, 'r> {
    pub(in crate::codec) params: &'p [(String, Type)],
    /// Top-level `list<u8>` parameters as [`Arg::Bytes`].
    pub(in crate::codec) bytes: bool,
    pub(in crate::codec) trail: &'r mut Trail,
    pub(in crate::codec) human: bool,
}

/// One parameter: as bytes when it is a `list<u8>` and bytes were asked
/// for, else as a value.
pub(in crate::codec) struct ArgSeed<'t, 'r> {
    pub(in crate::codec) ty: &'t Type,
    pub(in crate::codec) at: At<'t>,
    pub(in crate::codec) bytes: bool,
    pub(in crate::codec) trail: &'r mut Trail,
}

impl<'de> DeserializeSeed<'de> for ArgSeed<'_, '_> {
    type Value = Arg;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Arg, D::Error> {
        let ArgSeed {
            ty,
            at,
            bytes,
            trail,
        } = self;
        match ty {
            Type::List(list) if bytes && is_bytes(list) => {
                let human = de.is_human_readable();
                let result = de.deserialize_any(BytesVisitor { ty, trail, human });
                result.map(Arg::Bytes).map_err(|e| at.note(trail, e))
            }
            _ => Decode::new(ty, at, trail).deserialize(de).map(Arg::Val),
        }
    }
}

/// A `list<u8>` as bytes: MessagePack bin, base64 text, or an array of
/// numbers (as [`ValueVisitor`] takes them, with the same messages).
pub(in crate::codec) struct BytesVisitor<'t, 'r> {
    pub(in crate::codec) ty: &'t Type,
    pub(in crate::codec) trail: &'r mut Trail,
    pub(in crate::codec) human: bool,
}

impl BytesVisitor<'_, '_> {
    pub(in crate::codec) fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        ValueVisitor {
            ty: self.ty,
            trail: self.trail,
            human: self.human,
        }
        .reject(found)
    }
}

impl<'de> Visitor<'de> for BytesVisitor<'_, '_> {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("list<u8>")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        self.trail.charge(v.len())?;
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        self.trail.charge(v.len())?;
        Ok(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        base64_bytes(v, self.trail)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let trail = self.trail;
        let mut out = Vec::with_capacity(capacity(seq.size_hint()));
        loop {
            let at = At::Index(out.len());
            match seq.next_element_seed(Decode::new(&Type::U8, at, trail))? {
                Some(Val::U8(b)) => {
                    // Kept as one byte, not as the `Val` it was decoded to.
                    trail.budget += VAL_COST - 1;
                    out.push(b);
                }
                Some(_) => return Err(trail.fail("expected u8".to_owned())),
                None => break,
            }
        }
        Ok(out)
    }

    reject!(bool i64 u64 f64 null map ext);
}

impl ParamsVisitor<'_, '_> {
    pub(in crate::codec) fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let by_name = if self.human { "an object" } else { "a map" };
        let message = format!(
            "expected the parameters as {by_name} by name or an array by position, found {}",
            found.describe(self.human)
        );
        self.trail.fail(message)
    }
}

impl<'de> Visitor<'de> for ParamsVisitor<'_, '_> {
    type Value = Vec<Arg>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the parameters by name or by position")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<Arg>, E> {
        absent_params(self.params, self.trail)
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<Arg>, E> {
        absent_params(self.params, self.trail)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Arg>, A::Error> {
        let ParamsVisitor {
            params,
            bytes,
            trail,
            ..
        } = self;
        let mut values: Vec<Arg> = params.iter().map(|_| Arg::Val(Val::Option(None))).collect();
        let mut seen = Seen::new(params.len());
        while let Some(key) = map.next_key_seed(NameSeed {
            what: "a parameter name",
            at: At::Here,
            trail,
        })? {
            let Some(i) = params.iter().position(|(name, _)| *name == key) else {
                let names = params.iter().map(|(name, _)| name.as_str());
                let expected = one_of(names, "the function takes no parameters");
                return Err(trail.fail(format!("unknown parameter `{key}`, {expected}")));
            };
            if !seen.insert(i) {
                return Err(trail.fail(format!("duplicate parameter `{key}`")));
            }
            let (name, ty) = &params[i];
            let at = At::Name(name);
            values[i] = map.next_value_seed(ArgSeed {
                ty,
                at,
                bytes,
                trail,
            })?;
        }
        let absent = params.iter().enumerate();
        let absent: Vec<&str> = absent
            .filter(|(i, (_, ty))| !seen.contains(*i) && !matches!(ty, Type::Option(_)))
            .map(|(_, (name, _))| name.as_str())
            .collect();
        if !absent.is_empty() {
            return Err(trail.fail(missing("parameter", &absent)));
        }
        Ok(values)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Arg>, A::Error> {
        let ParamsVisitor {
            params,
            bytes,
            trail,
            ..
        } = self;
        let mut values = Vec::with_capacity(params.len());
        for (name, ty) in params {
            let at = At::Name(name);
            let value = seq.next_element_seed(ArgSeed {
                ty,
                at,
                bytes,
                trail,
            })?;
            match value {
                Some(value) => values.push(value),
                None => {
                    return absent_params(&params[values.len()..], trail).map(|rest| {
                        values.extend(rest);
                        values
                    });
                }
            }
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            let names = ticked(params.iter().map(|(name, _)| name.as_str()));
            let message = match params.len() {
                0 => "too many parameters: the function takes none".to_owned(),
                n => format!("too many parameters: the function takes {n} ({names})"),
            };
            return Err(trail.fail(message));
        }
        Ok(values)
    }

    reject!(bool i64 u64 f64 str bytes ext);
}

/// Parameters that were not given: `none` if they are all options.
pub(in crate::codec) fn absent_params<E: de::Error>(
    params: &[(String, Type)],
    trail: &mut Trail,
) -> Result<Vec<Arg>, E> {
    let required: Vec<&str> = params
        .iter()
        .filter(|(_, ty)| !matches!(ty, Type::Option(_)))
        .map(|(name, _)| name.as_str())
        .collect();
    if !required.is_empty() {
        return Err(trail.fail(missing("parameter", &required)));
    }
    Ok(params.iter().map(|_| Arg::Val(Val::Option(None))).collect())
}
