//! A server create request (Nova's body, every member checked the way Nova checks it) resolved
//! into the native `VmRequest`.

use super::*;

/// The last segment of a reference that may be a URL.
fn ref_id(v: &str) -> &str {
    v.trim_end_matches('/').rsplit('/').next().unwrap_or(v)
}

/// Members of a create request that Nova has and Kangaroo does not implement.
const UNSUPPORTED_CREATE: [&str; 11] = [
    "key_name",
    "user_data",
    "block_device_mapping",
    "personality",
    "accessIPv4",
    "accessIPv6",
    "adminPass",
    "return_reservation_id",
    "config_drive",
    "availability_zone_hint",
    "hostname",
];

/// Resolves a create request into the native one.
pub(super) fn vm_request(os: &Shared, body: &Value, m: Micro) -> OsResult<VmRequest> {
    let top = body
        .as_object()
        .ok_or_else(|| bad("The request body must be a JSON object."))?;
    for k in top.keys() {
        match k.as_str() {
            "server" => {}
            "os:scheduler_hints" | "OS-SCH-HNT:scheduler_hints" => {
                if top[k].as_object().is_some_and(|o| !o.is_empty()) {
                    return Err(bad(format!("{k} are not supported by Kangaroo: use availability_zone \"PROVIDER:HOST\" to choose a host.")));
                }
            }
            other => return Err(bad(format!("Invalid input for field/attribute: Additional properties are not allowed ('{other}' was unexpected)"))),
        }
    }
    let s: &Map<String, Value> = top
        .get("server")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("Invalid input for field/attribute server: 'server' is a required property and must be an object"))?;
    for (k, v) in s {
        match k.as_str() {
            "name" | "imageRef" | "flavorRef" | "networks" | "availability_zone" | "min_count"
            | "max_count" | "security_groups" | "metadata" | "OS-DCF:diskConfig" => {}
            "block_device_mapping_v2" => {
                // The one mapping Kangaroo has: boot from the image onto local storage (what
                // `openstack server create --image` sends).
                let local_image = |d: &Value| {
                    d.get("source_type").and_then(Value::as_str) == Some("image")
                        && d.get("destination_type").and_then(Value::as_str) == Some("local")
                        && d.get("boot_index").and_then(|b| b.as_i64().or_else(|| b.as_str().and_then(|x| x.parse().ok()))) == Some(0)
                        && d.get("uuid").and_then(Value::as_str) == s.get("imageRef").and_then(Value::as_str)
                };
                let only_image = v.as_array().is_some_and(|a| a.iter().all(local_image));
                if !only_image {
                    return Err(bad("Kangaroo boots servers from their image on local storage only: block_device_mapping_v2 may only repeat imageRef as a local boot device."));
                }
            }
            "description" if m >= Micro(19) => {
                if !v.is_null() {
                    return Err(bad("Kangaroo does not store server descriptions: leave description out."));
                }
            }
            k if UNSUPPORTED_CREATE.contains(&k) => {
                if !(v.is_null() || v == &json!(false) || v == &json!("")) {
                    return Err(bad(format!("{k} is not supported by Kangaroo's compute API.")));
                }
            }
            other => return Err(bad(format!("Invalid input for field/attribute server: Additional properties are not allowed ('{other}' was unexpected)"))),
        }
    }
    let name = s.get("name").and_then(Value::as_str).ok_or_else(|| {
        bad("Invalid input for field/attribute server: 'name' is a required property")
    })?;
    let flavor_ref = s
        .get("flavorRef")
        .and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_u64().map(|n| n.to_string()))
        })
        .ok_or_else(|| {
            bad("Invalid input for field/attribute server: 'flavorRef' is a required property")
        })?;
    let flavor = find_flavor(&os.cfg.flavors, ref_id(&flavor_ref))
        .ok_or_else(|| bad(format!("Flavor {flavor_ref} could not be found.")))?;
    let image_ref = s
        .get("imageRef")
        .and_then(Value::as_str)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| bad("Kangaroo boots servers from images only: imageRef is required."))?;
    let image = crate::openstack::image::find(ref_id(image_ref))
        .ok_or_else(|| bad(format!("Image {image_ref} could not be found.")))?;
    for k in ["min_count", "max_count"] {
        if let Some(v) = s.get(k) {
            let n = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|x| x.parse().ok()));
            if n != Some(1) {
                return Err(bad(format!(
                    "{k} must be 1: Kangaroo creates one server per request."
                )));
            }
        }
    }
    if let Some(md) = s.get("metadata") {
        if md.as_object().is_none_or(|o| !o.is_empty()) {
            return Err(bad(
                "Kangaroo does not store server metadata: leave metadata out.",
            ));
        }
    }
    if let Some(sg) = s.get("security_groups") {
        let only_default = sg.as_array().is_some_and(|a| {
            a.iter()
                .all(|g| g.get("name").and_then(Value::as_str) == Some("default"))
        });
        if !only_default {
            return Err(bad("Security group not found: Kangaroo has only the \"default\" group (port security is always on)."));
        }
    }
    let network = match s.get("networks") {
        None => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(Value::Array(a)) if a.len() == 1 => {
            let n = &a[0];
            if let Some(k) = n.as_object().and_then(|o| o.keys().find(|k| *k != "uuid")) {
                return Err(bad(format!("networks[0].{k} is not supported: Kangaroo assigns each server one address on one network.")));
            }
            let id = n
                .get("uuid")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("Invalid input for field/attribute networks: each network needs a uuid"))?;
            let net = crate::openstack::network::find_network(os, id)
                .ok_or_else(|| bad(format!("Network {id} could not be found.")))?;
            Some(net.name.to_string())
        }
        Some(Value::Array(_)) => return Err(bad("Kangaroo servers have one network: give one entry in networks.")),
        Some(Value::String(_)) => {
            return Err(bad("Invalid input for field/attribute networks: \"auto\" and \"none\" need microversion 2.37; give a list."))
        }
        Some(_) => return Err(bad("Invalid input for field/attribute networks: expected a list.")),
    };
    let network =
        match network {
            Some(n) => n,
            // Without a network, the server joins the only one there is (or the default network).
            None => {
                let nets = os.service.networks();
                match nets.as_slice() {
                    [one] => one.name.to_string(),
                    [] => crate::service::DEFAULT_NETWORK.0.to_owned(),
                    _ => return Err(OsError::new(
                        NOVA,
                        StatusCode::CONFLICT,
                        "Multiple possible networks found, use a Network ID to be more specific.",
                    )),
                }
            }
        };
    let (provider, host) = match s.get("availability_zone").and_then(Value::as_str) {
        None | Some("") => (None, None),
        Some(az) => {
            let (zone, host) = match az.split_once(':') {
                Some((z, h)) => (z, Some(h.trim_start_matches(':')).filter(|h| !h.is_empty())),
                None => (az, None),
            };
            if !os
                .service
                .providers()
                .iter()
                .any(|p| p.name.as_str() == zone)
            {
                return Err(bad(format!(
                    "The requested availability zone is not available: {zone}"
                )));
            }
            if let Some(h) = host {
                let on_zone = os
                    .service
                    .hosts()
                    .iter()
                    .any(|x| x.name.as_str() == h && x.provider.as_str() == zone);
                if !on_zone {
                    return Err(bad(format!(
                        "Compute host {h} could not be found in availability zone {zone}."
                    )));
                }
            }
            (Some(zone.to_owned()), host.map(str::to_owned))
        }
    };
    Ok(VmRequest {
        name: name.to_owned(),
        vcpus: f64::from(flavor.cpu_quarters) / f64::from(QUARTERS_PER_VCPU),
        memory: format!("{}MiB", flavor.ram_mib),
        network,
        image: Some(image.name.to_owned()),
        driver: None,
        app: None,
        affinity: None,
        anti_affinity: None,
        host,
        provider,
    })
}
