//! Reading-room sessions. The browser holds only an opaque session id in
//! an HttpOnly, SameSite=Strict cookie; the reader's bearer token stays
//! here, and every call the page makes (worklist, claim, report) rides on
//! the session. Each session has its own CSRF token, which every
//! state-changing form carries.
//!
//! Kept in this process's memory, bounded: a restart signs readers out
//! (their drafts are on the log, saved as they typed). Time is an
//! argument (Unix seconds).

use std::collections::HashMap;
use std::sync::Mutex;

/// A session unused this long is over.
pub const IDLE_SECONDS: i64 = 30 * 60;
/// A session is over this long after sign-in, used or not.
pub const LONGEST_SECONDS: i64 = 12 * 3_600;
/// At most this many sessions at once; the least recently used goes first.
pub const MOST: usize = 10_000;

/// Who is signed in, and the token the room calls the platform with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub principal: String,
    pub reader: String,
    /// The region the reader sits in, where their worklist is asked.
    pub region: String,
    pub token: String,
    /// When the token ends (Unix seconds), for one that is renewed or ends
    /// the session; `None`: it outlives the session.
    pub expires_at: Option<i64>,
    /// The provider (its index) and refresh token that renew it.
    pub refresh: Option<(usize, String)>,
    /// The provider (its index) and the ID token it signed the reader in
    /// with: signing out ends that session too.
    pub signed_in_with: Option<(usize, String)>,
    pub csrf: String,
    pub signed_in_at: i64,
    pub used_at: i64,
}

/// The token a session calls the platform with, and how it is renewed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub token: String,
    pub expires_at: Option<i64>,
    pub refresh: Option<(usize, String)>,
    pub signed_in_with: Option<(usize, String)>,
}

impl From<&str> for Grant {
    /// A token that outlives the session (development sign-in).
    fn from(token: &str) -> Grant {
        Grant { token: token.to_owned(), ..Grant::default() }
    }
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

/// 256 random bits as hex.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

impl Sessions {
    /// Signs `principal` (reading as `reader`) in: returns the session id
    /// for the cookie.
    pub fn open(
        &self,
        principal: &str,
        (reader, region): (&str, &str),
        grant: impl Into<Grant>,
        now: i64,
    ) -> Result<String, getrandom::Error> {
        let grant = grant.into();
        let (id, csrf) = (random_token()?, random_token()?);
        let session = Session {
            principal: principal.to_owned(),
            reader: reader.to_owned(),
            region: region.to_owned(),
            token: grant.token,
            expires_at: grant.expires_at,
            refresh: grant.refresh,
            signed_in_with: grant.signed_in_with,
            csrf,
            signed_in_at: now,
            used_at: now,
        };
        let mut by_id = self.by_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        by_id.retain(|_, s| live(s, now));
        if by_id.len() >= MOST
            && let Some(oldest) = by_id.iter().min_by_key(|(_, s)| s.used_at).map(|(id, _)| id.clone())
        {
            by_id.remove(&oldest);
        }
        by_id.insert(id.clone(), session);
        Ok(id)
    }

    /// The session `id` names, if it is live; marks it used.
    pub fn get(&self, id: &str, now: i64) -> Option<Session> {
        let mut by_id = self.by_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match by_id.get_mut(id) {
            Some(s) if live(s, now) => {
                s.used_at = now;
                Some(s.clone())
            }
            Some(_) => {
                by_id.remove(id);
                None
            }
            None => None,
        }
    }

    /// The session's token renewed.
    pub fn renew(&self, id: &str, grant: Grant) {
        let mut by_id = self.by_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = by_id.get_mut(id) {
            (s.token, s.expires_at, s.refresh) = (grant.token, grant.expires_at, grant.refresh);
        }
    }

    pub fn close(&self, id: &str) {
        self.by_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }
}

fn live(s: &Session, now: i64) -> bool {
    now - s.used_at < IDLE_SECONDS && now - s.signed_in_at < LONGEST_SECONDS
}

/// Compares two tokens in time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_while_used_and_never_past_its_longest() {
        let sessions = Sessions::default();
        let id = sessions.open("dr-nair", ("dr-priya-nair", "in-south"), "tok", 0).unwrap();
        assert_eq!(id.len(), 64);
        let s = sessions.get(&id, 60).unwrap();
        assert_eq!((s.reader.as_str(), s.token.as_str()), ("dr-priya-nair", "tok"));
        assert_ne!(s.csrf, id, "the CSRF token is not the session id");
        // Used every 20 minutes, it lives until its twelfth hour.
        let mut t = 60;
        while t + 1_200 < LONGEST_SECONDS {
            t += 1_200;
            assert!(sessions.get(&id, t).is_some(), "used at {t}");
        }
        assert!(sessions.get(&id, LONGEST_SECONDS).is_none(), "over after twelve hours");
        let idle = sessions.open("dr-nair", ("dr-priya-nair", "in-south"), "tok", 0).unwrap();
        assert!(sessions.get(&idle, IDLE_SECONDS).is_none(), "over after 30 idle minutes");
        assert!(sessions.get("forged", 0).is_none());
        let closed = sessions.open("dr-nair", ("dr-priya-nair", "in-south"), "tok", 0).unwrap();
        sessions.close(&closed);
        assert!(sessions.get(&closed, 1).is_none());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd") && !same_token("abc", "ab") && !same_token("", "a"));
    }
}
