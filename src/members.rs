//! Teams: who belongs to a tenant, invitations to join it, and changes of role. A tenant has
//! exactly one OWNER at every instant (`transferOwnership` swaps both roles in one
//! transaction); OWNER and ADMIN manage the rest. Tollgate sends no mail: an invitation's
//! one-time token (or the configured accept URL) goes back to the host app, and only its
//! SHA-256 is kept. Membership is read from the database on every request, so a removed
//! member loses access on the very next one, on every replica.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{Duration, Utc};
use entity::{
    tenant_invitation as invitation,
    tenant_user::{self, Role},
    user,
};
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    TransactionTrait, prelude::*, sea_query::Expr,
};
use serde_json::json;

use crate::{
    auth::{self, Viewer},
    config::Config,
    db::Database,
    error::AppError,
    tenants, webhooks,
};

/// What an invitation's token starts with.
const TOKEN_PREFIX: &str = "tg_inv_";

/// A member and their user.
pub type Member = (tenant_user::Model, user::Model);

/// An invitation made, with its token (shown once) and the host app's accept URL.
pub struct Invited {
    pub invitation: invitation::Model,
    pub token: String,
    pub accept_url: Option<String>,
}

/// Invites `email` into `tenant_id` as `role` (ADMIN or MEMBER; OWNER only by transfer).
/// OWNER and ADMIN only. `ALREADY_MEMBER` when that address is one.
pub async fn invite(
    db: &Database,
    config: &Config,
    viewer: &Viewer,
    tenant_id: Uuid,
    email: &str,
    role: Role,
) -> Result<Invited, AppError> {
    let invited_by = auth::require_admin(db, viewer, tenant_id).await?;
    let email = auth::normalize_email(email)?;
    if role == Role::Owner {
        return Err(AppError::bad_input(
            "an invitation makes an ADMIN or a MEMBER: use transferOwnership for the OWNER",
        ));
    }
    if let Some(existing) = auth::find_by_email(&db.read, &email).await?
        && tenant_user::Entity::find_by_id((tenant_id, existing.id))
            .one(&db.read)
            .await?
            .is_some()
    {
        return Err(AppError::AlreadyMember);
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let now = Utc::now();
    let ttl = i64::try_from(config.tenants.invitation_ttl_hours).unwrap_or(i64::MAX / 3600);
    let txn = db.write.begin().await?;
    let invitation = invitation::ActiveModel {
        tenant_id: Set(tenant_id),
        id: Set(Uuid::now_v7()),
        email: Set(email),
        role: Set(role),
        token_hash: Set(auth::sha256_hex(token.as_bytes())),
        invited_by: Set(invited_by),
        created_at: Set(now),
        expires_at: Set(now + Duration::hours(ttl)),
        accepted_at: Set(None),
        accepted_by: Set(None),
        revoked_at: Set(None),
    }
    .insert(&txn)
    .await?;
    let event = webhooks::NewEvent {
        tenant_id: Some(tenant_id),
        kind: "member.invited",
        data: json!({
            "invitationId": invitation.id,
            "email": invitation.email,
            "role": invitation.role.to_value(),
            "invitedBy": invited_by,
            "expiresAt": invitation.expires_at,
        }),
    };
    webhooks::record(&mut &txn, &event, now).await?;
    txn.commit().await?;
    let accept_url = config
        .tenants
        .invitation_accept_url
        .as_ref()
        .map(|template| template.replace("{token}", &token));
    Ok(Invited {
        invitation,
        token,
        accept_url,
    })
}

/// Revokes a pending invitation (OWNER and ADMIN of its tenant).
pub async fn revoke_invitation(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<invitation::Model, AppError> {
    auth::require_admin(db, viewer, tenant_id).await?;
    let found = invitation::Entity::find_by_id((tenant_id, id))
        .one(&db.write)
        .await?
        .filter(|i| i.accepted_at.is_none() && i.revoked_at.is_none())
        .ok_or(AppError::InvitationNotFound)?;
    let mut active: invitation::ActiveModel = found.into();
    active.revoked_at = Set(Some(Utc::now()));
    Ok(active.update(&db.write).await?)
}

/// Accepts an invitation for the signed-in user, whose email must be the invited one: one
/// transaction, usable once (a concurrent second acceptance finds it used).
pub async fn accept(
    db: &Database,
    config: &Config,
    viewer: &Viewer,
    token: &str,
) -> Result<Member, AppError> {
    let me = auth::me(db, viewer)
        .await?
        .ok_or(AppError::Unauthenticated(
            "sign in first: send Authorization: Bearer <token>",
        ))?;
    let now = Utc::now();
    let found = invitation::Entity::find()
        .filter(invitation::Column::TokenHash.eq(auth::sha256_hex(token.trim().as_bytes())))
        .one(&db.write)
        .await?
        .filter(|i| i.accepted_at.is_none() && i.revoked_at.is_none())
        .ok_or(AppError::InvitationNotFound)?;
    if found.expires_at <= now {
        return Err(AppError::InvitationExpired);
    }
    if found.email != me.email {
        return Err(AppError::InvitationEmailMismatch);
    }
    let txn = db.write.begin().await?;
    let taken = invitation::Entity::update_many()
        .col_expr(invitation::Column::AcceptedAt, Expr::value(now))
        .col_expr(invitation::Column::AcceptedBy, Expr::value(me.id))
        .filter(invitation::Column::TenantId.eq(found.tenant_id))
        .filter(invitation::Column::Id.eq(found.id))
        .filter(invitation::Column::AcceptedAt.is_null())
        .filter(invitation::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    if taken.rows_affected != 1 {
        return Err(AppError::InvitationNotFound);
    }
    if tenant_user::Entity::find_by_id((found.tenant_id, me.id))
        .one(&txn)
        .await?
        .is_some()
    {
        return Err(AppError::AlreadyMember);
    }
    tenants::ensure_room(&txn, config, viewer, me.id).await?;
    let membership = tenant_user::ActiveModel {
        tenant_id: Set(found.tenant_id),
        user_id: Set(me.id),
        role: Set(found.role),
        created_at: Set(now),
    }
    .insert(&txn)
    .await?;
    let event = webhooks::NewEvent {
        tenant_id: Some(found.tenant_id),
        kind: "member.joined",
        data: json!({
            "userId": me.id,
            "email": me.email,
            "role": membership.role.to_value(),
            "invitationId": found.id,
        }),
    };
    webhooks::record(&mut &txn, &event, now).await?;
    txn.commit().await?;
    tracing::info!(tenant.id = %found.tenant_id, user.id = %me.id, "invitation accepted");
    Ok((membership, me))
}

/// A tenant's members with their users, OWNER first (members only).
pub async fn members(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<Vec<Member>, AppError> {
    auth::require_member(db, viewer, tenant_id).await?;
    let rows = tenant_user::Entity::find()
        .filter(tenant_user::Column::TenantId.eq(tenant_id))
        .order_by_asc(tenant_user::Column::CreatedAt)
        .all(&db.read)
        .await?;
    let mut users: std::collections::HashMap<Uuid, user::Model> = user::Entity::find()
        .filter(user::Column::Id.is_in(rows.iter().map(|m| m.user_id)))
        .all(&db.read)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    let mut members: Vec<Member> = rows
        .into_iter()
        .filter_map(|m| users.remove(&m.user_id).map(|u| (m, u)))
        .collect();
    members.sort_by_key(|(m, _)| m.role != Role::Owner);
    Ok(members)
}

/// A tenant's pending invitations, newest first (OWNER and ADMIN).
pub async fn invitations(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<Vec<invitation::Model>, AppError> {
    auth::require_admin(db, viewer, tenant_id).await?;
    Ok(invitation::Entity::find()
        .filter(invitation::Column::TenantId.eq(tenant_id))
        .filter(invitation::Column::AcceptedAt.is_null())
        .filter(invitation::Column::RevokedAt.is_null())
        .order_by_desc(invitation::Column::Id)
        .all(&db.read)
        .await?)
}

/// Sets a member's role to ADMIN or MEMBER (OWNER and ADMIN; the OWNER's role changes only by
/// transfer: `LAST_OWNER`).
pub async fn change_role(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    user_id: Uuid,
    role: Role,
) -> Result<Member, AppError> {
    auth::require_admin(db, viewer, tenant_id).await?;
    if role == Role::Owner {
        return Err(AppError::bad_input(
            "use transferOwnership to make someone the OWNER",
        ));
    }
    let changed = tenant_user::Entity::update_many()
        .col_expr(tenant_user::Column::Role, Expr::value(role))
        .filter(tenant_user::Column::TenantId.eq(tenant_id))
        .filter(tenant_user::Column::UserId.eq(user_id))
        .filter(tenant_user::Column::Role.ne(Role::Owner))
        .exec(&db.write)
        .await?;
    if changed.rows_affected == 0 {
        return Err(member_or_owner(db, tenant_id, user_id).await?);
    }
    member(db, tenant_id, user_id).await
}

/// Removes a member (OWNER and ADMIN; never the OWNER: `LAST_OWNER`).
pub async fn remove(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    user_id: Uuid,
) -> Result<(), AppError> {
    auth::require_admin(db, viewer, tenant_id).await?;
    remove_unchecked(db, tenant_id, user_id).await
}

/// Leaves a tenant (any member but its OWNER: `LAST_OWNER`).
pub async fn leave(db: &Database, viewer: &Viewer, tenant_id: Uuid) -> Result<(), AppError> {
    auth::require_member(db, viewer, tenant_id).await?;
    remove_unchecked(db, tenant_id, viewer.require()?).await
}

async fn remove_unchecked(db: &Database, tenant_id: Uuid, user_id: Uuid) -> Result<(), AppError> {
    let removed = tenant_user::Entity::delete_many()
        .filter(tenant_user::Column::TenantId.eq(tenant_id))
        .filter(tenant_user::Column::UserId.eq(user_id))
        .filter(tenant_user::Column::Role.ne(Role::Owner))
        .exec(&db.write)
        .await?;
    match removed.rows_affected {
        0 => Err(member_or_owner(db, tenant_id, user_id).await?),
        _ => {
            tracing::info!(tenant.id = %tenant_id, user.id = %user_id, "member removed");
            Ok(())
        }
    }
}

/// Makes `to` (a member) the OWNER and the current OWNER an ADMIN, in one transaction: the
/// tenant has exactly one OWNER before and after, and no one sees it otherwise. Only the OWNER
/// may; of two concurrent transfers, the second finds the caller no longer OWNER.
pub async fn transfer_ownership(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    to: Uuid,
) -> Result<Member, AppError> {
    let me = viewer.require()?;
    if auth::require_member(db, viewer, tenant_id).await? != Role::Owner {
        return Err(AppError::Forbidden);
    }
    if to == me {
        return Err(AppError::bad_input("you are the OWNER already"));
    }
    let txn = db.write.begin().await?;
    let demoted = tenant_user::Entity::update_many()
        .col_expr(tenant_user::Column::Role, Expr::value(Role::Admin))
        .filter(tenant_user::Column::TenantId.eq(tenant_id))
        .filter(tenant_user::Column::UserId.eq(me))
        .filter(tenant_user::Column::Role.eq(Role::Owner))
        .exec(&txn)
        .await?;
    if demoted.rows_affected != 1 {
        // Another transfer went first.
        return Err(AppError::Forbidden);
    }
    let promoted = tenant_user::Entity::update_many()
        .col_expr(tenant_user::Column::Role, Expr::value(Role::Owner))
        .filter(tenant_user::Column::TenantId.eq(tenant_id))
        .filter(tenant_user::Column::UserId.eq(to))
        .exec(&txn)
        .await?;
    if promoted.rows_affected != 1 {
        return Err(AppError::NotFound("member"));
    }
    txn.commit().await?;
    tracing::info!(tenant.id = %tenant_id, user.id = %to, "ownership transferred");
    member(db, tenant_id, to).await
}

/// Why a change touching `user_id` changed nothing: the OWNER (`LAST_OWNER`), or no such
/// member.
async fn member_or_owner(
    db: &Database,
    tenant_id: Uuid,
    user_id: Uuid,
) -> Result<AppError, AppError> {
    let row = tenant_user::Entity::find_by_id((tenant_id, user_id))
        .one(&db.write)
        .await?;
    Ok(match row {
        Some(m) if m.role == Role::Owner => AppError::LastOwner,
        _ => AppError::NotFound("member"),
    })
}

async fn member(db: &Database, tenant_id: Uuid, user_id: Uuid) -> Result<Member, AppError> {
    let membership = tenant_user::Entity::find_by_id((tenant_id, user_id))
        .one(&db.write)
        .await?
        .ok_or(AppError::NotFound("member"))?;
    let user = user::Entity::find_by_id(user_id)
        .one(&db.write)
        .await?
        .ok_or(AppError::NotFound("member"))?;
    Ok((membership, user))
}
