//! The control plane's pure parts (issue: orchestrator on etcd): what a
//! service asks for (`spec`), where its instances go (`schedule`, a pure
//! function of a snapshot), and when a failed instance restarts
//! (`backoff`). The server, the node daemon and the stores build on these.

pub mod api;
pub mod assign;
pub mod auth;
pub mod backoff;
pub mod ca;
pub mod etcd;
pub mod ingress;
pub mod listen;
pub mod netpool;
pub mod node;
pub mod node_api;
pub mod overlay;
pub mod reconcile;
pub mod schedule;
pub mod server;
pub mod spec;
pub mod stack;
pub mod state;
pub mod store;
pub mod tls;
