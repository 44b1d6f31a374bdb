//! The package's analysed type: what a component exports (its actions,
//! `lifecycle`, `events`) and imports (the host's interfaces, and typed
//! imports another package must provide), read once from its types when it
//! loads. Types only: it must not link, instantiate or call anything.

use std::collections::HashMap;

use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentInstance, ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex};

use super::{MAX_ACTIONS, PackageError, STEEDOS_PACKAGE, TypedShape};
use crate::codec;

/// One action: a function the package exports.
#[derive(Clone, Debug)]
pub struct ActionType {
    /// The action's name within its package (`reserve`, or `stock.reserve`).
    pub name: String,
    /// The exported interface it belongs to (`None` for a world-level function).
    pub interface: Option<String>,
    /// The WIT function name.
    pub function: String,
    /// Parameter names and types, in order.
    pub params: Vec<(String, Type)>,
    /// The result type, if any.
    pub result: Option<Type>,
    /// Set when it is called through a typed function (no `Val`s; its
    /// byte lists cross as bytes).
    pub typed: Option<TypedShape>,
    /// Where to find the function in an instance.
    pub(crate) index: ComponentExportIndex,
}

/// An interface this package imports that some other package must export.
#[derive(Clone, Debug)]
pub struct TypedImport {
    /// Its full name, `acme:inventory/stock@0.1.0`.
    pub interface: String,
    /// Its functions and their types as the importer expects them.
    pub functions: Vec<(String, ComponentFunc)>,
}

/// What a component exports and imports, read from its types.
#[derive(Clone, Debug)]
pub struct PackageType {
    /// Its actions.
    pub actions: Vec<ActionType>,
    /// Interfaces it exports with their functions' action indexes (for
    /// providing typed imports of other packages).
    pub exported_interfaces: Vec<(String, Vec<usize>)>,
    /// Interfaces it needs from other packages.
    pub typed_imports: Vec<TypedImport>,
    /// Host interfaces it imports (`wasi:*`, `steedos:package/*`).
    pub host_imports: Vec<String>,
    /// Action index by name, so a call finds its action at once.
    by_name: HashMap<String, usize>,
    pub(super) lifecycle: Option<(ComponentExportIndex, ComponentExportIndex)>,
    pub(super) events: Option<ComponentExportIndex>,
    /// The `wasi:http/incoming-handler@0.2.x` it exports, by its full name:
    /// the gateway serves it at the routes of `[gateway.http]`.
    pub http_handler: Option<String>,
}

impl PackageType {
    /// Reads what `component` offers and needs; `package` names it in errors.
    pub fn analyze(
        engine: &Engine,
        component: &Component,
        package: &str,
    ) -> Result<Self, PackageError> {
        let cty = component.component_type();
        let mut ty = PackageType {
            actions: Vec::new(),
            exported_interfaces: Vec::new(),
            typed_imports: Vec::new(),
            host_imports: Vec::new(),
            by_name: HashMap::new(),
            lifecycle: None,
            events: None,
            http_handler: None,
        };
        let reading = Reading {
            engine,
            component,
            package,
        };
        let mut other_exports = Vec::new();
        for (name, ext) in cty.exports(engine) {
            if let Some(other) = reading.export(&mut ty, name, ext.ty)? {
                other_exports.push(other);
            }
        }
        // A component built for `wasmtime serve` or Spin exports only its handler.
        if ty.actions.is_empty() && ty.events.is_none() && ty.http_handler.is_none() {
            let exports = match other_exports.is_empty() {
                true => "none".to_string(),
                false => other_exports.join(", "),
            };
            return Err(PackageError::NotAPackage {
                package: package.to_string(),
                exports,
            });
        }
        qualify_shared_names(&mut ty.actions);
        ty.by_name = ty
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        for (name, ext) in cty.imports(engine) {
            reading.import(&mut ty, name, ext.ty)?;
        }
        Ok(ty)
    }

    /// The action called `name` (within this package), with its index.
    pub fn action(&self, name: &str) -> Option<(usize, &ActionType)> {
        let &i = self.by_name.get(name)?;
        Some((i, &self.actions[i]))
    }

    /// The names of its actions, in export order, as a list for people
    /// (`hello, reserve`).
    pub fn action_names(&self) -> String {
        let names: Vec<&str> = self.actions.iter().map(|a| a.name.as_str()).collect();
        names.join(", ")
    }

    /// Whether the package exports `steedos:package/lifecycle`.
    pub fn has_lifecycle(&self) -> bool {
        self.lifecycle.is_some()
    }

    /// Whether the package exports `wasi:http/incoming-handler@0.2`.
    pub fn serves_http(&self) -> bool {
        self.http_handler.is_some()
    }

    /// Whether the package exports `steedos:package/events`.
    pub fn handles_events(&self) -> bool {
        self.events.is_some()
    }

    /// The exported interface `name`'s function `function`, as an action index.
    pub fn exported_function(&self, interface: &str, function: &str) -> Option<usize> {
        let (_, indexes) = self
            .exported_interfaces
            .iter()
            .find(|(n, _)| n == interface)?;
        indexes
            .iter()
            .copied()
            .find(|&i| self.actions[i].function == function)
    }
}

/// One component being read: what every step needs to find an export
/// and to name the package in an error.
struct Reading<'a> {
    engine: &'a Engine,
    component: &'a Component,
    package: &'a str,
}

impl Reading<'_> {
    /// Reads one export into `ty`; an export that is none of the host's
    /// business comes back by name (for the "not a package" message).
    fn export(
        &self,
        ty: &mut PackageType,
        name: &str,
        item: ComponentItem,
    ) -> Result<Option<String>, PackageError> {
        let component = self.component;
        match item {
            ComponentItem::ComponentInstance(_) if is_steedos(name, "lifecycle") => {
                let iface = export_index(component, None, name)?;
                let started = export_index(component, Some(&iface), "started")?;
                let stopped = export_index(component, Some(&iface), "stopped")?;
                ty.lifecycle = Some((started, stopped));
            }
            ComponentItem::ComponentInstance(_) if is_steedos(name, "events") => {
                let iface = export_index(component, None, name)?;
                ty.events = Some(export_index(component, Some(&iface), "handle")?);
            }
            ComponentItem::ComponentInstance(_) if is_http_handler(name) => {
                ty.http_handler = Some(name.to_string());
            }
            ComponentItem::ComponentInstance(_) if name.starts_with("wasi:") => {
                return Ok(Some(name.to_string()));
            }
            ComponentItem::ComponentInstance(inst) => self.interface(ty, name, &inst)?,
            ComponentItem::ComponentFunc(f) => {
                self.room_for_one_more(ty)?;
                let index = export_index(component, None, name)?;
                ty.actions
                    .push(action(self.package, None, name, &f, index)?);
            }
            _ => return Ok(Some(name.to_string())),
        }
        Ok(None)
    }

    /// An exported interface of the package's own: each function an action.
    fn interface(
        &self,
        ty: &mut PackageType,
        name: &str,
        inst: &ComponentInstance,
    ) -> Result<(), PackageError> {
        let iface = export_index(self.component, None, name)?;
        let mut indexes = Vec::new();
        for (fname, item) in inst.exports(self.engine) {
            match item.ty {
                ComponentItem::ComponentFunc(f) => {
                    self.room_for_one_more(ty)?;
                    let index = export_index(self.component, Some(&iface), fname)?;
                    indexes.push(ty.actions.len());
                    ty.actions
                        .push(action(self.package, Some(name), fname, &f, index)?);
                }
                ComponentItem::Resource(_) => {
                    return Err(unsupported(
                        self.package,
                        format!("export `{name}`"),
                        format!("resource `{fname}`: packages exchange plain data, not resources"),
                    ));
                }
                _ => {}
            }
        }
        ty.exported_interfaces.push((name.to_string(), indexes));
        Ok(())
    }

    fn room_for_one_more(&self, ty: &PackageType) -> Result<(), PackageError> {
        match ty.actions.len() >= MAX_ACTIONS {
            true => Err(PackageError::TooManyActions {
                package: self.package.to_string(),
                count: ty.actions.len() + 1,
                max: MAX_ACTIONS,
            }),
            false => Ok(()),
        }
    }

    /// Reads one import into `ty`: the host's, or a typed import.
    fn import(
        &self,
        ty: &mut PackageType,
        name: &str,
        item: ComponentItem,
    ) -> Result<(), PackageError> {
        let inst = match item {
            _ if name.starts_with("wasi:")
                || name.starts_with(STEEDOS_PACKAGE)
                || crate::kv::is_kv_interface(name) =>
            {
                ty.host_imports.push(name.to_string());
                return Ok(());
            }
            ComponentItem::ComponentInstance(inst) => inst,
            _ => {
                return Err(unsupported(
                    self.package,
                    format!("import `{name}`"),
                    "only interfaces can be imported (a bare function or type cannot be provided)"
                        .to_string(),
                ));
            }
        };
        let mut functions = Vec::new();
        for (fname, item) in inst.exports(self.engine) {
            match item.ty {
                ComponentItem::ComponentFunc(f) => functions.push((fname.to_string(), f)),
                ComponentItem::Type(_) => {}
                _ => {
                    return Err(unsupported(
                        self.package,
                        format!("import `{name}`"),
                        format!("`{fname}` is not a function; packages import functions only"),
                    ));
                }
            }
        }
        ty.typed_imports.push(TypedImport {
            interface: name.to_string(),
            functions,
        });
        Ok(())
    }
}

/// Whether an export named `name` is `wasi:http/incoming-handler` of WASI 0.2.
fn is_http_handler(name: &str) -> bool {
    name.strip_prefix("wasi:http/incoming-handler@0.2.")
        .is_some_and(|patch| !patch.is_empty())
}

fn is_steedos(name: &str, interface: &str) -> bool {
    name.strip_prefix(STEEDOS_PACKAGE)
        .is_some_and(|rest| rest == interface || rest.starts_with(&format!("{interface}@")))
}

fn export_index(
    component: &Component,
    parent: Option<&ComponentExportIndex>,
    name: &str,
) -> Result<ComponentExportIndex, PackageError> {
    component
        .get_export_index(parent, name)
        .ok_or_else(|| PackageError::Link {
            package: String::new(),
            message: format!(
                "export `{name}` is listed in the component's type but cannot be found"
            ),
        })
}

fn unsupported(package: &str, item: String, reason: String) -> PackageError {
    PackageError::Unsupported {
        package: package.to_string(),
        item,
        reason,
    }
}

fn action(
    package: &str,
    interface: Option<&str>,
    function: &str,
    f: &ComponentFunc,
    index: ComponentExportIndex,
) -> Result<ActionType, PackageError> {
    if f.async_() {
        return Err(unsupported(
            package,
            format!("action `{function}`"),
            "async functions are not supported yet".into(),
        ));
    }
    let params: Vec<(String, Type)> = f.params().map(|(n, t)| (n.to_string(), t)).collect();
    let result = f.results().next();
    // The codec's own check: what it could never write is refused now.
    let typed = params.iter().map(|(name, t)| (Some(name.as_str()), t));
    for (param, t) in typed.chain(result.iter().map(|t| (None, t))) {
        if let Err(e) = codec::check_supported(t) {
            let reason = match param {
                Some(name) => format!("parameter `{name}`: {e}"),
                None => format!("result: {e}"),
            };
            return Err(unsupported(package, format!("action `{function}`"), reason));
        }
    }
    Ok(ActionType {
        name: function.to_string(),
        interface: interface.map(str::to_string),
        function: function.to_string(),
        typed: TypedShape::of(&params, result.as_ref()),
        params,
        result,
        index,
    })
}

/// `reserve` stays `reserve` unless another exported interface also has a
/// `reserve`; then both become `<interface>.reserve`.
fn qualify_shared_names(actions: &mut [ActionType]) {
    // Counted once, so a package with many actions loads in linear time.
    let mut uses: HashMap<String, usize> = HashMap::with_capacity(actions.len());
    for a in actions.iter() {
        *uses.entry(a.function.clone()).or_default() += 1;
    }
    for a in actions.iter_mut() {
        let shared = uses.get(&a.function).is_some_and(|&n| n > 1);
        if let (true, Some(iface)) = (shared, &a.interface) {
            a.name = format!("{}.{}", interface_short_name(iface), a.function);
        }
    }
}

/// `acme:inventory/stock@0.1.0` -> `stock`.
pub fn interface_short_name(interface: &str) -> &str {
    let tail = interface.rsplit('/').next().unwrap_or(interface);
    tail.split('@').next().unwrap_or(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_interface_names() {
        assert_eq!(interface_short_name("acme:inventory/stock@0.1.0"), "stock");
        assert_eq!(interface_short_name("acme:inventory/stock"), "stock");
    }
}
