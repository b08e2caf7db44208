//! Teams: a tenant's members and its invitations.

use async_graphql::{ID, SimpleObject};
use chrono::{DateTime, Utc};
use entity::tenant_invitation;

use super::{Role, User};
use crate::members::{Invited, Member as MemberRow};

/// A member of a tenant.
#[derive(SimpleObject, Clone, Debug)]
pub struct Member {
    /// The user.
    pub user: User,
    /// Their role in the tenant.
    pub role: Role,
    /// When they joined.
    pub joined_at: DateTime<Utc>,
}

impl From<MemberRow> for Member {
    fn from((membership, user): MemberRow) -> Self {
        Member {
            user: user.into(),
            role: membership.role.into(),
            joined_at: membership.created_at,
        }
    }
}

/// An invitation to join a tenant (never its token).
#[derive(SimpleObject, Clone, Debug)]
pub struct Invitation {
    /// The invitation's id.
    pub id: ID,
    /// The tenant it is for.
    pub tenant_id: ID,
    /// Only the user with this email may accept it.
    pub email: String,
    /// The role it gives.
    pub role: Role,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops being usable.
    pub expires_at: DateTime<Utc>,
    /// When it was accepted, if it was.
    pub accepted_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<tenant_invitation::Model> for Invitation {
    fn from(i: tenant_invitation::Model) -> Self {
        Invitation {
            id: ID(i.id.to_string()),
            tenant_id: ID(i.tenant_id.to_string()),
            email: i.email,
            role: i.role.into(),
            created_at: i.created_at,
            expires_at: i.expires_at,
            accepted_at: i.accepted_at,
            revoked_at: i.revoked_at,
        }
    }
}

/// A new invitation and its one-time token: hand the token (or `acceptUrl`) to the invitee;
/// Tollgate sends no mail and keeps only the token's hash.
#[derive(SimpleObject, Clone, Debug)]
pub struct InvitationCreated {
    /// The invitation.
    pub invitation: Invitation,
    /// The one-time token `acceptInvitation` takes (`tg_inv_…`); shown only here.
    pub token: String,
    /// `tenants.invitation_accept_url` with the token in it; null when not configured.
    pub accept_url: Option<String>,
}

impl From<Invited> for InvitationCreated {
    fn from(i: Invited) -> Self {
        InvitationCreated {
            invitation: i.invitation.into(),
            token: i.token,
            accept_url: i.accept_url,
        }
    }
}
