//! Linking a package to the packages it imports from: each typed import
//! resolved to the one package exporting it (its grant and every
//! function's type checked), the package's linker built from the app's
//! base linker, and the check that an upgrade keeps what other packages
//! import. It reads package types and specs; it must not start instances
//! nor touch the broker.

use std::sync::Arc;

use wasmtime::component::{Component, Linker};

use crate::manifest::PackageSpec;
use crate::package::{self, Cutoff, ImportTarget, Package, PackageError, PackageType, TypedImport};
use crate::types;

/// A package that may provide typed imports: its spec and its types.
pub(super) struct Provider<'a> {
    pub(super) spec: &'a PackageSpec,
    pub(super) ty: &'a PackageType,
}

/// Links one package: its typed imports to their providers, then the rest.
pub(super) fn link(
    spec: &PackageSpec,
    ty: &PackageType,
    component: &Component,
    providers: &[Provider<'_>],
    base: &Linker<package::HostState>,
    cutoff: &Arc<Cutoff>,
    http: &crate::http::HttpMetrics,
) -> Result<Package, PackageError> {
    let mut linker = base.clone();
    crate::kv::link_if_imported(&mut linker, component).map_err(|message| PackageError::Link {
        package: spec.name.clone(),
        message,
    })?;
    for import in &ty.typed_imports {
        let targets = resolve_import(spec, import, providers)?;
        package::link_typed_import(&mut linker, import, targets).map_err(|e| {
            PackageError::Link {
                package: spec.name.clone(),
                message: format!("{e:#}"),
            }
        })?;
    }
    let outbound = crate::http::link(&mut linker, spec, component, http).map_err(|message| {
        PackageError::Link {
            package: spec.name.clone(),
            message,
        }
    })?;
    Package::new(spec.clone(), ty.clone(), component, &linker, cutoff.clone())
        .map(|p| p.with_http(outbound))
}

/// An upgrade of `name` from `old` to `ty` must keep every function other
/// packages import from it, with the same type.
pub(super) fn check_dependents(
    name: &str,
    old: &PackageType,
    ty: &PackageType,
    others: &[Provider<'_>],
) -> Result<(), String> {
    for other in others {
        for import in &other.ty.typed_imports {
            if !old
                .exported_interfaces
                .iter()
                .any(|(n, _)| *n == import.interface)
            {
                continue;
            }
            for (fname, fty) in &import.functions {
                let Some(index) = ty.exported_function(&import.interface, fname) else {
                    return Err(format!(
                        "package `{}` imports `{}` function `{fname}`, which this version of `{name}` no longer exports",
                        other.spec.name, import.interface
                    ));
                };
                let action = &ty.actions[index];
                let wanted: Vec<(String, _)> =
                    fty.params().map(|(n, t)| (n.to_string(), t)).collect();
                if !same_signature(&wanted, fty.results().next().as_ref(), action) {
                    return Err(format!(
                        "package `{}` imports `{}` function `{fname}` as {} but this version of `{name}` exports {}",
                        other.spec.name,
                        import.interface,
                        types::wit_signature(&wanted, fty.results().next().as_ref()),
                        types::wit_signature(&action.params, action.result.as_ref())
                    ));
                }
            }
        }
    }
    Ok(())
}

fn same_signature(
    params: &[(String, wasmtime::component::types::Type)],
    result: Option<&wasmtime::component::types::Type>,
    action: &crate::package::ActionType,
) -> bool {
    params.len() == action.params.len()
        && params
            .iter()
            .zip(&action.params)
            .all(|((_, a), (_, b))| a == b)
        && result == action.result.as_ref()
}

/// Finds the one package that exports `import`, checks the grant and every
/// function's type, and returns where each function goes.
fn resolve_import(
    importer: &PackageSpec,
    import: &TypedImport,
    all: &[Provider<'_>],
) -> Result<Vec<Arc<ImportTarget>>, PackageError> {
    let err = |reason: String| PackageError::Import {
        package: importer.name.clone(),
        interface: import.interface.clone(),
        reason,
    };
    let providers: Vec<&Provider<'_>> = all
        .iter()
        .filter(|p| {
            p.spec.name != importer.name
                && p.ty
                    .exported_interfaces
                    .iter()
                    .any(|(n, _)| *n == import.interface)
        })
        .collect();
    let provider = match providers.as_slice() {
        [] => return Err(err("no loaded package exports it".to_string())),
        [one] => *one,
        many => {
            let names: Vec<&str> = many.iter().map(|p| p.spec.name.as_str()).collect();
            return Err(err(format!(
                "it is exported by more than one package ({}); keep one",
                names.join(", ")
            )));
        }
    };
    let mut targets = Vec::new();
    for (fname, fty) in &import.functions {
        let Some(index) = provider.ty.exported_function(&import.interface, fname) else {
            return Err(err(format!(
                "package `{}` exports it without the function `{fname}`",
                provider.spec.name
            )));
        };
        let action = &provider.ty.actions[index];
        let label = format!("{}.{}", provider.spec.name, action.name);
        if !importer.grants.may_call(&label) {
            return Err(err(format!(
                "its grants do not allow calling `{label}`: add \"{}.*\" to `calls` in [packages.{}.grants]",
                provider.spec.name, importer.name
            )));
        }
        let wanted: Vec<(String, _)> = fty.params().map(|(n, t)| (n.to_string(), t)).collect();
        let wanted_result = fty.results().next();
        if !same_signature(&wanted, wanted_result.as_ref(), action) {
            return Err(err(format!(
                "function `{fname}` has another type in package `{}`: the importer expects {} but `{}` exports {}",
                provider.spec.name,
                types::wit_signature(&wanted, wanted_result.as_ref()),
                provider.spec.name,
                types::wit_signature(&action.params, action.result.as_ref()),
            )));
        }
        targets.push(Arc::new(ImportTarget {
            provider: provider.spec.name.as_str().into(),
            action: index,
            interface: import.interface.clone(),
            function: fname.clone(),
            label,
            errors_as_value: package::is_call_error_result(wanted_result.as_ref()),
        }));
    }
    Ok(targets)
}
