//! The per-request part of a build: the SBOM, the release manifest with this request's issue
//! time, expiry and sequence, signed and checked against the trust root before anything is
//! written. Runs on every build, cache hit or not (see [`super::image`] for why).

use std::path::Path;

use basalt_manifest::chrono::Duration as ChronoDuration;
use basalt_manifest::{
    sign_release, verify_release, Artifact, ArtifactKind, Manifest, Policy, SigningKey,
    SCHEMA_VERSION,
};

use super::error::{io, BuildError};
use super::image::{
    file_len, sha256_file, BuildFacts, BuildRequest, INITRD_IMG, RELEASE_JSON, RELEASE_SIGNED,
    USR_IMG, VMLINUZ,
};
use super::inputs::Inputs;
use super::sbom::{self, BasaltBinary, KernelPackage, SbomInput, SBOM_FILE};

/// Write `sbom.spdx.json`, `release.json` and `release.signed` into `req.out` (which already
/// holds the cached artifacts).
pub(crate) fn sign_request(
    req: &BuildRequest,
    inputs: &Inputs,
    facts: &BuildFacts,
    extensions: &[crate::sysext::Built],
) -> Result<(), BuildError> {
    let config = &inputs.config;
    let out = &req.out;
    let usr = out.join(USR_IMG);
    let usr_sha = sha256_file(&usr)?;

    // The SBOM: the cached facts plus this request's revisions and time.
    let revision_of = |name: &str| -> Option<String> {
        if name == "basalt-init" {
            return req.init_revision.clone();
        }
        inputs
            .binaries
            .iter()
            .find(|b| b.name == name)
            .and_then(|b| b.revision.clone())
    };
    let basalt: Vec<BasaltBinary> = facts
        .basalt_files
        .iter()
        .map(|f| BasaltBinary {
            name: f.name.clone(),
            location: f.location.clone(),
            sha256: f.sha256.clone(),
            revision: revision_of(&f.name),
        })
        .collect();
    let k = &facts.kernel_deb;
    let kernel = KernelPackage {
        name: k.name.clone(),
        version: k.version.clone(),
        arch: k.arch.clone(),
        sha256: k.sha256.clone(),
        source: k.source.clone(),
        source_version: k.source_version.clone(),
    };
    let usr_hex = usr_sha.to_hex();
    let doc = sbom::generate(&SbomInput {
        os: &facts.os,
        version: &facts.version,
        profile: &facts.profile,
        variant: facts.variant.as_str(),
        created: req.issued_at,
        builder: &facts.builder,
        usr_sha256: &usr_hex,
        root_hash: &facts.root_hash,
        debian: &facts.packages,
        kernel: &kernel,
        host: &facts.host_packages,
        basalt: &basalt,
    });
    let sbom_path = out.join(SBOM_FILE);
    let sbom_bytes = serde_json::to_vec_pretty(&doc).map_err(|e| BuildError::Io {
        op: "serialise",
        path: sbom_path.clone(),
        source: e.into(),
    })?;
    write(&sbom_path, &sbom_bytes)?;

    // The manifest.
    let usr_verity = facts.usr_verity(&out.join(super::image::BUILD_JSON))?;
    let artifact = |kind, name: &str, verity| -> Result<Artifact, BuildError> {
        let path = out.join(name);
        Ok(Artifact {
            kind,
            name: name.to_owned(),
            size: file_len(&path)?,
            sha256: sha256_file(&path)?,
            compression: None,
            verity,
        })
    };
    let mut manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        os: config.os.name.clone(),
        version: config.os.version.clone(),
        channel: config.os.channel.clone(),
        arch: config.os.arch.clone(),
        sequence: config.release.sequence,
        issued_at: req.issued_at,
        expires_at: req.issued_at + ChronoDuration::days(i64::from(config.release.valid_days)),
        artifacts: vec![
            artifact(ArtifactKind::Usr, USR_IMG, Some(usr_verity))?,
            artifact(ArtifactKind::Kernel, VMLINUZ, None)?,
            artifact(ArtifactKind::Initrd, INITRD_IMG, None)?,
            artifact(ArtifactKind::Sbom, SBOM_FILE, None)?,
        ],
        sysext_level: Some(config.os.sysext_level()),
    };
    // The extensions that ship with this OS version, with the verity parameters their
    // signed statements bind (`basalt_sysext::check_staged` compares the two on the node).
    for ext in extensions {
        let name = format!(
            "{}{}",
            ext.statement.name,
            basalt_sysext::image::IMAGE_SUFFIX
        );
        manifest.artifacts.push(artifact(
            ArtifactKind::Sysext,
            &name,
            Some(ext.statement.verity.clone()),
        )?);
    }
    let json = manifest.to_json().map_err(|source| BuildError::Sign {
        what: "release manifest (serialise)",
        source: Box::new(source),
    })?;
    let key_refs: Vec<&SigningKey> = inputs.keys.iter().collect();
    let signed = sign_release(&manifest, &key_refs).map_err(|source| BuildError::Sign {
        what: "release manifest",
        source: Box::new(source),
    })?;
    verify_release(&signed, &inputs.trust, &Policy::new(req.issued_at)).map_err(|source| {
        BuildError::KeysDoNotSatisfyTrust {
            trust: req.trust.clone(),
            source: Box::new(source),
        }
    })?;
    write(&out.join(RELEASE_JSON), &json)?;
    write(&out.join(RELEASE_SIGNED), &signed)?;
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    basalt_fsutil::write_atomic(path, bytes, 0o644).map_err(|e| io("write", &e.path)(e.source))
}
