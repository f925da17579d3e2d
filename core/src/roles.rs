//! Who may do what on a link between tiers: the role a certificate carries, and what each
//! role may ask of the member it connects to. The QUIC trigger checks every frame against
//! [`Role::may`]; the README's role table is this one.
//!
//! | role | invoke | status | deploy (send a manifest or module) | prepare (load ahead) | accepts connections | joins the mesh |
//! |---|---|---|---|---|---|---|
//! | `client` (a device) | yes | yes | no | no | no | no |
//! | `operator` (a person, CI) | yes | yes | yes | yes | no | no |
//! | `node` (an edge node) | yes | yes | no | no | yes | yes |
//! | `router` | yes | yes | yes | yes | yes | yes |
//! | `bridge` (the cloud tier) | yes | yes | yes | yes | yes | yes |
//!
//! A router or a bridge sends a manifest only for functions it holds, which only an operator
//! (or the admin token on its gateway) could have deployed there.

use std::fmt;

/// What a certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A device or a client program: may invoke.
    Client,
    /// A person or CI deploying over QUIC.
    Operator,
    /// An edge node agent.
    Node,
    /// The cloud tier.
    Bridge,
    /// A router (edge gateway).
    Router,
}

/// What a peer asks of the member it is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Run a function the member has.
    Invoke,
    /// Read the member's capacity.
    Status,
    /// Provide a function's manifest (and module): deploys or replaces it on the member.
    Deploy,
    /// Load a function ahead of calls.
    Prepare,
    /// Read the spans of a trace (they name functions, members and timings).
    ReadTraces,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Client,
        Role::Operator,
        Role::Node,
        Role::Bridge,
        Role::Router,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Node => "node",
            Role::Bridge => "bridge",
            Role::Router => "router",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether holders may do `action` on a member they are connected to.
    pub fn may(self, action: Action) -> bool {
        match action {
            Action::Invoke | Action::Status => true,
            Action::Deploy | Action::Prepare | Action::ReadTraces => {
                matches!(self, Role::Operator | Role::Router | Role::Bridge)
            }
        }
    }

    /// `Ok` when allowed, else the refusal that names role and action.
    pub fn check(self, action: Action) -> Result<(), Refusal> {
        if self.may(action) {
            Ok(())
        } else {
            Err(Refusal { role: self, action })
        }
    }

    /// Whether holders accept connections from other members.
    pub fn serves(self) -> bool {
        matches!(self, Role::Node | Role::Bridge | Role::Router)
    }

    /// Whether holders are members of the gossip mesh (and get its key).
    pub fn joins_mesh(self) -> bool {
        self.serves()
    }
}

impl Action {
    /// A one-word name, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Action::Invoke => "invoke",
            Action::Status => "status",
            Action::Deploy => "deploy",
            Action::Prepare => "prepare",
            Action::ReadTraces => "traces",
        }
    }

    /// As a refusal says it: `role client may not deploy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Invoke => "invoke",
            Action::Status => "read status",
            Action::Deploy => "deploy",
            Action::Prepare => "prepare functions",
            Action::ReadTraces => "read traces",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame refused for its sender's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("role {role} may not {}", action.as_str())]
pub struct Refusal {
    pub role: Role,
    pub action: Action,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_operators_routers_and_bridges_provide_code() {
        for r in Role::ALL {
            assert!(r.may(Action::Invoke) && r.may(Action::Status));
            let deploys = matches!(r, Role::Operator | Role::Router | Role::Bridge);
            assert_eq!(r.may(Action::Deploy), deploys, "{r}");
            assert_eq!(r.may(Action::Prepare), deploys, "{r}");
        }
        assert_eq!(
            Role::Client.check(Action::Deploy).unwrap_err().to_string(),
            "role client may not deploy"
        );
    }

    #[test]
    fn clients_and_operators_neither_serve_nor_join_the_mesh() {
        for r in [Role::Client, Role::Operator] {
            assert!(!r.serves() && !r.joins_mesh());
        }
        for r in [Role::Node, Role::Bridge, Role::Router] {
            assert!(r.serves() && r.joins_mesh());
        }
    }

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
    }
}
