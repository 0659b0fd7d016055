//! User settings and the UI document (HostSession.userSettings,
//! setUserSettings, uiDocument), as sdk-go/host's settings.go and ui.go.
//!
//! The schema carries settings and the UI document as JSON text
//! (`Data`); this crate hands them over as that text, unparsed, so it
//! needs no JSON library: parse them with the host's own (serde_json, ...).

use crate::schema::{control_capnp, host_capnp};
use crate::{Error, Result};

/// The settings scope a host reads and writes (manifest `[settings.user]`).
pub const SCOPE_USER: &str = "user";
/// The operator's scope (manifest `[settings.global]`); hosts cannot read
/// or write it.
pub const SCOPE_GLOBAL: &str = "global";

/// One scope of a plugin's settings as a host sees them
/// (schema/control.capnp `PluginSettings`): secrets are masked as
/// `"********"`. The JSON members are the daemon's text, unparsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginSettings {
    /// The scope: [`SCOPE_USER`] for what a host reads.
    pub scope: String,
    /// The user the settings belong to (0 for the global scope).
    pub user: i64,
    /// A JSON object: the schema's defaults overlaid with what is stored.
    pub values: String,
    /// A JSON object: only what was set.
    pub stored: String,
    /// The scope's JSON Schema, as the plugin ships it.
    pub schema: String,
    /// Its JSON Forms UI schema, if the plugin ships one.
    pub ui: Option<String>,
    /// Why the stored values fail the current schema (after an upgrade
    /// changed it), if they do.
    pub problem: Option<String>,
}

impl PluginSettings {
    pub(crate) fn read(ps: control_capnp::plugin_settings::Reader) -> Result<PluginSettings> {
        let text = |b: capnp::Result<&[u8]>, what: &str| -> Result<String> {
            String::from_utf8(b?.to_vec())
                .map_err(|e| Error::Protocol(format!("settings {what} are not UTF-8 JSON: {e}")))
        };
        let ui = text(ps.get_ui(), "UI schema")?;
        let problem = ps.get_problem()?.to_string()?;
        Ok(PluginSettings {
            scope: ps.get_scope()?.to_string()?,
            user: ps.get_user(),
            values: text(ps.get_values(), "values")?,
            stored: text(ps.get_stored(), "stored values")?,
            schema: text(ps.get_schema(), "schema")?,
            ui: (!ui.is_empty()).then_some(ui),
            problem: (!problem.is_empty()).then_some(problem),
        })
    }
}

/// What the enabled, running plugins add to the host's web UI
/// (HostSession.uiDocument; docs/protocol.md "Plugin UI", format 1): the
/// daemon's JSON document, unparsed. Fetch it again when the route table
/// changes; its `"version"` member says whether anything changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UiDocument {
    json: String,
}

impl UiDocument {
    /// The document as JSON text.
    pub fn as_str(&self) -> &str {
        &self.json
    }

    /// The document as JSON text, owned.
    pub fn into_string(self) -> String {
        self.json
    }

    /// The document a host serves while the daemon is away (as the Go
    /// Middleware does): no plugins, so the host's own UI works.
    pub fn unavailable() -> UiDocument {
        UiDocument { json: r#"{"format":1,"version":"unavailable","slots":[],"plugins":[]}"#.into() }
    }
}

impl std::fmt::Display for UiDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.json)
    }
}

/// A settings or UI call, run on the connection thread.
pub(crate) enum SettingsCall {
    Get { plugin: String, user: i64, reply: tokio::sync::oneshot::Sender<Result<PluginSettings>> },
    Set { plugin: String, user: i64, values: String, reply: tokio::sync::oneshot::Sender<Result<PluginSettings>> },
    Ui { reply: tokio::sync::oneshot::Sender<Result<UiDocument>> },
}

impl SettingsCall {
    pub(crate) fn away(self) {
        match self {
            SettingsCall::Get { reply, .. } | SettingsCall::Set { reply, .. } => {
                let _ = reply.send(Err(Error::DaemonAway));
            }
            SettingsCall::Ui { reply } => {
                let _ = reply.send(Err(Error::DaemonAway));
            }
        }
    }

    pub(crate) async fn run(self, session: host_capnp::host_session::Client) {
        match self {
            SettingsCall::Get { plugin, user, reply } => {
                let res = async {
                    let mut req = session.user_settings_request();
                    req.get().set_plugin(plugin.as_str());
                    req.get().set_user(user);
                    let reply = req.send().promise.await?;
                    PluginSettings::read(reply.get()?.get_settings()?)
                }
                .await;
                let _ = reply.send(res);
            }
            SettingsCall::Set { plugin, user, values, reply } => {
                let res = async {
                    let mut req = session.set_user_settings_request();
                    req.get().set_plugin(plugin.as_str());
                    req.get().set_user(user);
                    req.get().set_values(values.as_bytes());
                    let reply = req.send().promise.await?;
                    PluginSettings::read(reply.get()?.get_settings()?)
                }
                .await;
                let _ = reply.send(res);
            }
            SettingsCall::Ui { reply } => {
                let res = async {
                    let reply = session.ui_document_request().send().promise.await?;
                    let doc = reply.get()?.get_document()?;
                    let json = String::from_utf8(doc.to_vec())
                        .map_err(|e| Error::Protocol(format!("the UI document is not UTF-8 JSON: {e}")))?;
                    Ok(UiDocument { json })
                }
                .await;
                let _ = reply.send(res);
            }
        }
    }
}
