//! The live `org.berth.Berth1.Manager` interface must match `dbus/org.berth.Berth1.xml`, the
//! documented contract. Served over a socket pair: no bus, no root, no systemd needed.
//! After an intended change, regenerate the file with `BERTH_BLESS=1 cargo test --test
//! dbus_interface` and review the diff.

use berth::api::{MANAGER_INTERFACE, Manager, OBJECT_PATH};
use berth::image::Pool;
use zbus::connection::Builder;
use zbus::fdo::IntrospectableProxy;

const XML_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dbus/org.berth.Berth1.xml");

/// The `<interface name="…">…</interface>` element, one trimmed line per line.
fn interface_element(xml: &str, name: &str) -> Option<Vec<String>> {
    let start = xml.find(&format!("<interface name=\"{name}\">"))?;
    let len = xml[start..].find("</interface>")? + "</interface>".len();
    Some(
        xml[start..start + len]
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

async fn live_introspection() -> anyhow::Result<String> {
    let state = tempfile::tempdir()?;
    let pool = Pool::new(state.path().join("machines"), state.path());
    let machines = berth::machine::Machines::new(
        state.path().join("defs"),
        state.path().join("roots"),
        pool.clone(),
    );
    let (server_end, client_end) = std::os::unix::net::UnixStream::pair()?;
    let guid = zbus::Guid::generate();
    let server = Builder::unix_stream(server_end)
        .server(guid)
        .p2p()
        .serve_at(
            OBJECT_PATH,
            Manager::new(pool, machines, "/usr/libexec/berthd".into()),
        )
        .build();
    let client = Builder::unix_stream(client_end).p2p().build();
    let (_server, client) = tokio::try_join!(server, client)?;
    let proxy = IntrospectableProxy::builder(&client)
        .destination("org.berth.Berth1")
        .path(OBJECT_PATH)
        .build()
        .await?;
    Ok(proxy.introspect().await?)
}

#[tokio::test]
async fn live_interface_matches_the_documented_xml() -> anyhow::Result<()> {
    let live = live_introspection().await?;
    let live_iface = interface_element(&live, MANAGER_INTERFACE)
        .ok_or_else(|| anyhow::anyhow!("live introspection lacks {MANAGER_INTERFACE}:\n{live}"))?;
    if std::env::var_os("BERTH_BLESS").is_some() {
        let body: String = live_iface.iter().map(|l| format!("  {l}\n")).collect();
        std::fs::write(
            XML_PATH,
            format!(
                "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- berthd's manager interface at /org/berth/Berth1 on the system bus name org.berth.Berth1.\n     Generated from the live interface (BERTH_BLESS=1 cargo test --test dbus_interface);\n     tests/dbus_interface.rs fails when the two differ. -->\n<node name=\"/org/berth/Berth1\">\n{body}</node>\n"
            ),
        )?;
    }
    let documented = std::fs::read_to_string(XML_PATH)?;
    let documented_iface = interface_element(&documented, MANAGER_INTERFACE)
        .ok_or_else(|| anyhow::anyhow!("{XML_PATH} lacks {MANAGER_INTERFACE}"))?;
    assert_eq!(
        live_iface, documented_iface,
        "the live D-Bus interface differs from {XML_PATH}; if the change is intended, run BERTH_BLESS=1 cargo test --test dbus_interface"
    );
    Ok(())
}
