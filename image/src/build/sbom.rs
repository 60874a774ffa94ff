//! The release's bill of materials: an **SPDX 2.3** JSON document (`sbom.spdx.json`), listed
//! in the signed manifest as an artifact of kind `sbom`, so the release signatures cover it.
//!
//! # Why SPDX 2.3 and not CycloneDX
//!
//! Both are read by the scanners that matter (Trivy, Grype, Syft). SPDX 2.3 is an ISO standard
//! (ISO/IEC 5962:2021) and models exactly what a Debian-based image has to say: a package
//! element per binary package with `checksums` (the SHA-256 of the `.deb`), a
//! `downloadLocation`, a `purl` (`pkg:deb/debian/NAME@VERSION?arch=…&upstream=SOURCE`), and a
//! separate element per *source* package tied to its binaries by a `GENERATED_FROM`
//! relationship — CycloneDX has no first-class source-package link (tools squeeze it into a
//! purl qualifier). The official validator (`pyspdxtools`, spdx/tools-python) checks it.
//!
//! # What is listed
//!
//! - `SPDXRef-Image`: the release (`/usr` image `usr.img` by its SHA-256, the verity root hash
//!   in the comment); the document `DESCRIBES` it and it `CONTAINS` everything else.
//! - every Debian package installed in `/usr` (dpkg's own database, checked against the
//!   resolution): name, version, architecture, `.deb` SHA-256 as apt verified it against the
//!   signed archive index, download URI, source package;
//! - the kernel package (`vmlinuz` on the ESP, its modules in `/usr/lib/modules`), also by the
//!   SHA-256 of the `.deb` apt fetched;
//! - files copied from the build host (busybox for the minimal profile; `mke2fs` and its
//!   libraries in the initramfs): their Debian package by name and version as the host's dpkg
//!   reports it, each file by SHA-256 — no `.deb` hash (the host installed them);
//! - the Basalt binaries (`basalt-init` in the initramfs, a definition's `[[binaries]]` in
//!   `/usr`): SHA-256 of the file, and the git revision of this repository they were built
//!   from (`NOASSERTION` when the file was handed in by path).
//!
//! Deterministic: the same inputs (including the creation time, the release's issue time)
//! give the same bytes; the namespace names the release and its root hash.

use std::collections::BTreeMap;

use basalt_manifest::chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::debian::{HostPackage, StagedPackage};

/// The file name of the SBOM in a release directory.
pub const SBOM_FILE: &str = "sbom.spdx.json";

/// The kernel package, as fetched by apt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    pub source: String,
    pub source_version: String,
}

/// A Basalt program in the release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasaltBinary {
    pub name: String,
    /// Where it is (`initrd.img:/init`, `/usr/libexec/basalt/basalt-updated`).
    pub location: String,
    pub sha256: String,
    pub revision: Option<String>,
}

/// Everything an SBOM is made from.
#[derive(Debug, Clone)]
pub struct SbomInput<'a> {
    pub os: &'a str,
    pub version: &'a str,
    pub profile: &'a str,
    pub variant: &'a str,
    pub created: DateTime<Utc>,
    pub builder: &'a str,
    pub usr_sha256: &'a str,
    pub root_hash: &'a str,
    pub debian: &'a [StagedPackage],
    pub kernel: &'a KernelPackage,
    pub host: &'a [HostPackage],
    pub basalt: &'a [BasaltBinary],
}

/// An SPDX 2.3 document (the subset Basalt writes and reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpdxDocument {
    pub spdx_version: String,
    pub data_license: String,
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    pub name: String,
    pub document_namespace: String,
    pub creation_info: CreationInfo,
    pub document_describes: Vec<String>,
    pub packages: Vec<SpdxPackage>,
    pub relationships: Vec<Relationship>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationInfo {
    pub created: String,
    pub creators: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpdxPackage {
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier: Option<String>,
    pub download_location: String,
    pub files_analyzed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<Checksum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_package_purpose: Option<String>,
    pub license_concluded: String,
    pub license_declared: String,
    pub copyright_text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<ExternalRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    pub algorithm: String,
    pub checksum_value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRef {
    pub reference_category: String,
    pub reference_type: String,
    pub reference_locator: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relationship {
    pub spdx_element_id: String,
    pub relationship_type: String,
    pub related_spdx_element: String,
}

const NOASSERTION: &str = "NOASSERTION";

/// An SPDX id from free text: `SPDXRef-` + letters, digits, `.` and `-` (other bytes as `xHH`).
pub fn spdx_id(parts: &[&str]) -> String {
    let mut id = String::from("SPDXRef");
    for part in parts {
        id.push('-');
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || b == b'.' {
                id.push(b as char);
            } else {
                id.push_str(&format!("x{b:02X}"));
            }
        }
    }
    id
}

/// A purl component: percent-encode what is not unreserved (`+` → `%2B`, `:` → `%3A`).
fn purl_escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn debian_purl(
    name: &str,
    version: &str,
    arch: &str,
    source: &str,
    source_version: &str,
) -> String {
    let mut purl = format!(
        "pkg:deb/debian/{}@{}?arch={}&distro=debian-12",
        purl_escape(name),
        purl_escape(version),
        purl_escape(arch)
    );
    if source != name || source_version != version {
        purl.push_str(&format!("&upstream={}", purl_escape(source)));
        if source_version != version {
            purl.push_str(&format!("%40{}", purl_escape(source_version)));
        }
    }
    purl
}

fn sha256(value: &str) -> Vec<Checksum> {
    vec![Checksum {
        algorithm: "SHA256".into(),
        checksum_value: value.to_owned(),
    }]
}

fn rel(a: &str, kind: &str, b: &str) -> Relationship {
    Relationship {
        spdx_element_id: a.to_owned(),
        relationship_type: kind.to_owned(),
        related_spdx_element: b.to_owned(),
    }
}

fn package(id: String, name: &str, version: Option<&str>) -> SpdxPackage {
    SpdxPackage {
        spdx_id: id,
        name: name.to_owned(),
        version_info: version.map(str::to_owned),
        supplier: None,
        download_location: NOASSERTION.into(),
        files_analyzed: false,
        checksums: Vec::new(),
        source_info: None,
        primary_package_purpose: None,
        license_concluded: NOASSERTION.into(),
        license_declared: NOASSERTION.into(),
        copyright_text: NOASSERTION.into(),
        external_refs: Vec::new(),
        comment: None,
    }
}

/// Build the document.
pub fn generate(input: &SbomInput<'_>) -> SpdxDocument {
    let image_id = "SPDXRef-Image".to_owned();
    let mut packages = Vec::new();
    let mut relationships = vec![rel("SPDXRef-DOCUMENT", "DESCRIBES", &image_id)];
    let mut image = package(image_id.clone(), input.os, Some(input.version));
    image.supplier = Some("Organization: Basalt".into());
    image.checksums = sha256(input.usr_sha256);
    image.primary_package_purpose = Some("OPERATING-SYSTEM".into());
    image.comment = Some(format!(
        "Basalt {} {} ({} profile, {} variant); the checksum is usr.img's; dm-verity root hash {}",
        input.os, input.version, input.profile, input.variant, input.root_hash
    ));
    packages.push(image);

    // Source packages, once each.
    let mut sources: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut source_of = |name: &str, version: &str, packages: &mut Vec<SpdxPackage>| -> String {
        sources
            .entry((name.to_owned(), version.to_owned()))
            .or_insert_with(|| {
                let id = spdx_id(&["debsrc", name, version]);
                let mut p = package(id.clone(), name, Some(version));
                p.supplier = Some("Organization: Debian".into());
                p.primary_package_purpose = Some("SOURCE".into());
                packages.push(p);
                id
            })
            .clone()
    };

    let debian_supplier = Some("Organization: Debian".to_owned());
    for d in input.debian {
        let id = spdx_id(&["deb", &d.name, &d.arch]);
        let mut p = package(id.clone(), &d.name, Some(&d.version));
        p.supplier = debian_supplier.clone();
        p.download_location = d.uri.clone();
        p.checksums = sha256(&d.sha256);
        p.source_info = Some(format!(
            "built from Debian source package {} {}",
            d.source, d.source_version
        ));
        p.primary_package_purpose = Some("INSTALL".into());
        p.external_refs = vec![ExternalRef {
            reference_category: "PACKAGE-MANAGER".into(),
            reference_type: "purl".into(),
            reference_locator: debian_purl(
                &d.name,
                &d.version,
                &d.arch,
                &d.source,
                &d.source_version,
            ),
        }];
        p.comment = Some(format!(
            "installed in /usr; architecture {}; the checksum is the .deb's, as apt verified it against the signed archive index",
            d.arch
        ));
        packages.push(p);
        relationships.push(rel(&image_id, "CONTAINS", &id));
        let src = source_of(&d.source, &d.source_version, &mut packages);
        relationships.push(rel(&id, "GENERATED_FROM", &src));
    }

    let k = input.kernel;
    let kid = spdx_id(&["deb", &k.name, &k.arch]);
    let mut kp = package(kid.clone(), &k.name, Some(&k.version));
    kp.supplier = debian_supplier.clone();
    kp.checksums = sha256(&k.sha256);
    kp.source_info = Some(format!(
        "built from Debian source package {} {}",
        k.source, k.source_version
    ));
    kp.primary_package_purpose = Some("INSTALL".into());
    kp.external_refs = vec![ExternalRef {
        reference_category: "PACKAGE-MANAGER".into(),
        reference_type: "purl".into(),
        reference_locator: debian_purl(&k.name, &k.version, &k.arch, &k.source, &k.source_version),
    }];
    kp.comment = Some(format!(
        "the kernel (vmlinuz on the ESP) and the modules in /usr/lib/modules and the initramfs; architecture {}; the checksum is the .deb's, as apt fetched it",
        k.arch
    ));
    packages.push(kp);
    relationships.push(rel(&image_id, "CONTAINS", &kid));
    let src = source_of(&k.source, &k.source_version, &mut packages);
    relationships.push(rel(&kid, "GENERATED_FROM", &src));

    for h in input.host {
        let id = spdx_id(&["host", &h.name, &h.arch]);
        let mut p = package(id.clone(), &h.name, Some(&h.version));
        p.supplier = debian_supplier.clone();
        p.source_info = Some(format!(
            "built from Debian source package {} {}",
            h.source, h.source_version
        ));
        p.primary_package_purpose = Some("INSTALL".into());
        p.external_refs = vec![ExternalRef {
            reference_category: "PACKAGE-MANAGER".into(),
            reference_type: "purl".into(),
            reference_locator: debian_purl(
                &h.name,
                &h.version,
                &h.arch,
                &h.source,
                &h.source_version,
            ),
        }];
        let files: Vec<String> = h
            .files
            .iter()
            .map(|(path, sum)| format!("{path} sha256:{sum}"))
            .collect();
        p.comment = Some(format!(
            "files copied from the build host's installed package (architecture {}): {}",
            h.arch,
            files.join(", ")
        ));
        packages.push(p);
        relationships.push(rel(&image_id, "CONTAINS", &id));
        let src = source_of(&h.source, &h.source_version, &mut packages);
        relationships.push(rel(&id, "GENERATED_FROM", &src));
    }

    for (i, b) in input.basalt.iter().enumerate() {
        // Numbered: one program can be in the image twice (the initramfs and /usr).
        let id = spdx_id(&["basalt", &(i + 1).to_string(), &b.name]);
        let mut p = package(
            id.clone(),
            &b.name,
            Some(b.revision.as_deref().unwrap_or(NOASSERTION)),
        );
        p.supplier = Some("Organization: Basalt".into());
        p.checksums = sha256(&b.sha256);
        p.primary_package_purpose = Some("APPLICATION".into());
        p.source_info = Some(match &b.revision {
            Some(r) => format!("built from the Basalt repository at git revision {r}"),
            None => "handed to the build by path: revision not known".into(),
        });
        p.comment = Some(format!("at {}", b.location));
        packages.push(p);
        relationships.push(rel(&image_id, "CONTAINS", &id));
    }

    let created = input.created.to_rfc3339_opts(SecondsFormat::Secs, true);
    SpdxDocument {
        spdx_version: "SPDX-2.3".into(),
        data_license: "CC0-1.0".into(),
        spdx_id: "SPDXRef-DOCUMENT".into(),
        name: format!(
            "{}-{}-{}-{}",
            input.os, input.version, input.profile, input.variant
        ),
        document_namespace: format!(
            "https://basalt.invalid/spdx/{}/{}/{}-{}",
            input.os,
            purl_escape(input.version),
            input.root_hash,
            input.created.timestamp()
        ),
        creation_info: CreationInfo {
            created,
            creators: vec![
                format!("Tool: {}", input.builder),
                "Organization: Basalt".into(),
            ],
        },
        document_describes: vec![image_id],
        packages,
        relationships,
    }
}

/// What `basalt release inspect` shows of an SBOM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SbomSummary {
    pub name: String,
    pub created: String,
    /// Debian packages in `/usr` (name, version, arch, source), sorted.
    pub debian: Vec<(String, String, String, String)>,
    /// Other Debian packages (kernel, host-provided files).
    pub other_debian: Vec<(String, String)>,
    /// Basalt programs (name, revision, location).
    pub basalt: Vec<(String, String, String)>,
}

/// Summarise a parsed document (by the purposes and ids this module writes).
pub fn summarize(doc: &SpdxDocument) -> SbomSummary {
    let mut debian = Vec::new();
    let mut other = Vec::new();
    let mut basalt = Vec::new();
    let src_of = |id: &str| -> String {
        doc.relationships
            .iter()
            .find(|r| r.spdx_element_id == id && r.relationship_type == "GENERATED_FROM")
            .and_then(|r| {
                doc.packages
                    .iter()
                    .find(|p| p.spdx_id == r.related_spdx_element)
            })
            .map(|p| p.name.clone())
            .unwrap_or_default()
    };
    for p in &doc.packages {
        let version = p.version_info.clone().unwrap_or_default();
        if p.spdx_id.starts_with("SPDXRef-deb-")
            && p.comment
                .as_deref()
                .is_some_and(|c| c.starts_with("installed in /usr"))
        {
            let arch = p
                .comment
                .as_deref()
                .and_then(|c| c.split("architecture ").nth(1))
                .and_then(|s| s.split(';').next())
                .unwrap_or_default()
                .to_owned();
            debian.push((p.name.clone(), version, arch, src_of(&p.spdx_id)));
        } else if p.spdx_id.starts_with("SPDXRef-deb-") || p.spdx_id.starts_with("SPDXRef-host-") {
            other.push((p.name.clone(), version));
        } else if p.spdx_id.starts_with("SPDXRef-basalt-") {
            let at = p
                .comment
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches("at ")
                .to_owned();
            basalt.push((p.name.clone(), version, at));
        }
    }
    debian.sort();
    other.sort();
    SbomSummary {
        name: doc.name.clone(),
        created: doc.creation_info.created.clone(),
        debian,
        other_debian: other,
        basalt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_manifest::chrono::TimeZone;

    const USR_SHA: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const ROOT_HASH: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn staged(name: &str, version: &str, source: &str, sv: &str) -> StagedPackage {
        StagedPackage {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: "a".repeat(64),
            size: 10,
            uri: format!("http://m/pool/{name}.deb"),
            source: source.into(),
            source_version: sv.into(),
        }
    }

    fn input<'a>(
        debian: &'a [StagedPackage],
        kernel: &'a KernelPackage,
        basalt: &'a [BasaltBinary],
    ) -> SbomInput<'a> {
        SbomInput {
            os: "basalt",
            version: "1.0.0",
            profile: "container-host",
            variant: "product",
            created: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            builder: "basalt-image-build/4",
            usr_sha256: USR_SHA,
            root_hash: ROOT_HASH,
            debian,
            kernel,
            host: &[],
            basalt,
        }
    }

    fn kernel() -> KernelPackage {
        KernelPackage {
            name: "linux-image-6.1.0-57-amd64".into(),
            version: "6.1.158-1".into(),
            arch: "amd64".into(),
            sha256: "d".repeat(64),
            source: "linux-signed-amd64".into(),
            source_version: "6.1.158+1".into(),
        }
    }

    #[test]
    fn ids_are_spdx_safe_and_distinct() {
        assert_eq!(
            spdx_id(&["deb", "libstdc++6", "amd64"]),
            "SPDXRef-deb-libstdcx2Bx2B6-amd64"
        );
        assert_ne!(spdx_id(&["deb", "a+b"]), spdx_id(&["deb", "a.b"]));
        let id = spdx_id(&["debsrc", "libcap2", "1:2.66-4"]);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)),
            "{id}"
        );
    }

    #[test]
    fn packages_sources_and_binaries_are_related() {
        let debian = [
            staged("libc6", "2.36-9+deb12u14", "glibc", "2.36-9+deb12u14"),
            staged("libc-bin", "2.36-9+deb12u14", "glibc", "2.36-9+deb12u14"),
            staged("bash", "5.2.15-2+b7", "bash", "5.2.15-2"),
        ];
        let k = kernel();
        let basalt = [BasaltBinary {
            name: "basalt-init".into(),
            location: "initrd.img:/init".into(),
            sha256: "e".repeat(64),
            revision: Some("f".repeat(40)),
        }];
        let doc = generate(&input(&debian, &k, &basalt));
        assert_eq!(doc.spdx_version, "SPDX-2.3");
        // glibc once, bash's source once, the kernel's source once.
        let sources: Vec<&str> = doc
            .packages
            .iter()
            .filter(|p| p.primary_package_purpose.as_deref() == Some("SOURCE"))
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(sources, ["glibc", "bash", "linux-signed-amd64"]);
        let libc = doc.packages.iter().find(|p| p.name == "libc6").unwrap();
        assert_eq!(libc.checksums[0].checksum_value, "a".repeat(64));
        assert_eq!(
            libc.external_refs[0].reference_locator,
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64&distro=debian-12&upstream=glibc"
        );
        let bash = doc.packages.iter().find(|p| p.name == "bash").unwrap();
        assert!(bash.external_refs[0]
            .reference_locator
            .ends_with("&upstream=bash%405.2.15-2"));
        let summary = summarize(&doc);
        assert_eq!(summary.debian.len(), 3);
        assert!(summary.debian.contains(&(
            "libc6".into(),
            "2.36-9+deb12u14".into(),
            "amd64".into(),
            "glibc".into()
        )));
        assert_eq!(summary.other_debian, [(k.name.clone(), k.version.clone())]);
        assert_eq!(summary.basalt[0].1, "f".repeat(40));
        // Every relationship names elements that exist.
        for r in &doc.relationships {
            for id in [&r.spdx_element_id, &r.related_spdx_element] {
                assert!(
                    id == "SPDXRef-DOCUMENT" || doc.packages.iter().any(|p| &p.spdx_id == id),
                    "{id}"
                );
            }
        }
        // Deterministic.
        assert_eq!(doc, generate(&input(&debian, &k, &basalt)));
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.contains("\"SPDXID\":\"SPDXRef-DOCUMENT\""));
        let back: SpdxDocument = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn a_binary_without_revision_says_so() {
        let k = kernel();
        let basalt = [BasaltBinary {
            name: "basalt-init".into(),
            location: "initrd.img:/init".into(),
            sha256: "e".repeat(64),
            revision: None,
        }];
        let doc = generate(&input(&[], &k, &basalt));
        let p = doc
            .packages
            .iter()
            .find(|p| p.name == "basalt-init")
            .unwrap();
        assert_eq!(p.version_info.as_deref(), Some("NOASSERTION"));
        assert!(p.source_info.as_deref().unwrap().contains("not known"));
    }
}
