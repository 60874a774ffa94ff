//! The extensions that ship with a release (`[[extensions]]` of the image definition): built
//! for every request, after the cached part is in place, into the release folder as
//! `NAME.raw`, then listed by [`super::sign`] as `sysext` artifacts.
//!
//! ```text
//! [[extensions]] definition ─▶ SysextDefinition ─▶ SysextSpec (ID = os.name, SYSEXT_LEVEL
//!   = the definition's or os.sysext_level) ─▶ crate::sysext::build (signed with the
//!   release keys, verified against the trust root) ─▶ OUT/NAME.raw
//!   ─▶ compatible with the release's own OS (HostOs::of_release rules), or the build fails
//! ```
//!
//! Why not cached with `usr.img`: the images are signed (keys are inputs anyway) and cheap
//! (≈1 MiB, erofs of a small tree; `.deb` files are cached by name), and building them per
//! request keeps the cache key of the `/usr` part independent of the extensions' contents:
//! a new version of an extension's tree or packages reuses the `/usr` build (the image
//! definition's text is part of the key, so adding or removing an `[[extensions]]` entry
//! does not). The output is reproducible (salt, UUIDs and timestamps derived from the
//! definition). The output `disk.img` carries the set on its root partition
//! (`super::rootpart::seed_extensions`).

use std::collections::BTreeSet;

use basalt_sysext::compat::{release_architecture, HostOs};

use super::config::ImageConfig;
use super::error::BuildError;
use super::image::BuildRequest;
use super::inputs::Inputs;
use crate::sysext::{build, Built, SysextDefinition, SysextError};

/// The OS a release of `config` boots, as extensions are checked against it.
pub fn release_host(config: &ImageConfig) -> HostOs {
    HostOs {
        id: config.os.name.clone(),
        version_id: Some(config.os.version.to_string()),
        sysext_level: Some(config.os.sysext_level()),
        architecture: release_architecture(&config.os.arch),
    }
}

/// Builds every `[[extensions]]` entry into `req.out` (see the module docs).
pub(crate) fn build_all(
    req: &BuildRequest,
    inputs: &Inputs,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Built>, BuildError> {
    let config = &inputs.config;
    let host = release_host(config);
    let keys: Vec<&basalt_manifest::SigningKey> = inputs.keys.iter().collect();
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for ext in &config.extensions {
        let definition = ImageConfig::resolve_path(&req.config, &ext.definition);
        let fail = |source: SysextError| BuildError::Extension {
            definition: definition.clone(),
            source: Box::new(source),
        };
        let def = SysextDefinition::load(&definition).map_err(fail)?;
        let spec = def
            .spec(&definition, &config.os.name, &config.os.sysext_level())
            .map_err(fail)?;
        if !names.insert(spec.name.clone()) {
            return Err(fail(SysextError::Spec {
                reason: format!("extension {} is listed twice in [[extensions]]", spec.name),
            }));
        }
        log(&format!(
            "building extension {} {}",
            spec.name, spec.version
        ));
        let built = build(
            &spec,
            &keys,
            &req.out,
            &req.debian_cache.join("debs"),
            Some(&inputs.trust),
        )
        .map_err(fail)?;
        basalt_sysext::activate::check_extension(&built.statement, &host)
            .map_err(|e| fail(SysextError::Verify(Box::new(e))))?;
        out.push(built);
    }
    Ok(out)
}
