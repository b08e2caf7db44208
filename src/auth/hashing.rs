//! Password hashing (argon2id, 19 MiB and 2 passes each) on a few threads of its own, with a
//! bounded queue. Unbounded, 300 concurrent sign-ins took a server from 22 MB to 4.9 GB: each
//! hash allocated its 19 MiB anew, and the allocator kept what it had handed out, per thread.
//! Here at most `concurrency` hashes run at once, each thread hashes in memory it allocated
//! once, and a sign-in that would wait behind a full queue is answered `RATE_LIMITED` at once.

use std::sync::{
    Arc, Mutex,
    mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, Salt, SaltString, rand_core::OsRng},
};

use crate::error::AppError;

/// Work for a hashing thread, given that thread's argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The most memory a stored hash may ask for (4× the default 19 MiB): hashes Tollgate did not
/// write itself (imported accounts) must not make a thread allocate without bound.
const MAX_BLOCKS: usize = 4 * Params::DEFAULT_M_COST as usize;

/// The hashing threads and their queue; cheap to clone.
#[derive(Clone)]
pub struct Hasher {
    queue: SyncSender<Job>,
}

impl Hasher {
    /// `concurrency` threads (0: one per core) behind a queue of `queue` waiting hashes.
    pub fn spawn(concurrency: usize, queue: usize) -> anyhow::Result<Self> {
        let threads = match concurrency {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let (sender, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..threads {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || work(&receiver))?;
        }
        Ok(Hasher { queue: sender })
    }

    /// The argon2id hash of `password`, in PHC form.
    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        self.run(move |memory| hash(&password, memory))
            .await?
            .map_err(AppError::Internal)
    }

    /// Whether `password` matches the PHC `hash`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, AppError> {
        self.run(move |memory| verify(&password, &hash, memory))
            .await?
            .map_err(AppError::Internal)
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = done.send(job(memory));
        });
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(AppError::RateLimited { retry_after: 1 }),
            Err(TrySendError::Disconnected(_)) => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "the password hashing threads are gone"
                )));
            }
        }
        result
            .await
            .map_err(|_| AppError::Internal(anyhow::anyhow!("a password hashing thread panicked")))
    }
}

/// argon2id with the default parameters (m = 19 MiB, t = 2, p = 1), in PHC form.
fn hash(password: &str, memory: &mut Vec<Block>) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let params = Params::default();
    let out = compute(
        password,
        salt.as_salt(),
        Algorithm::Argon2id,
        Version::V0x13,
        &params,
        memory,
    )?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params)
            .try_into()
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(out),
    };
    Ok(phc.to_string())
}

/// Whether `password` hashes to the PHC `stored` with the algorithm, version, parameters and
/// salt written in it.
fn verify(password: &str, stored: &str, memory: &mut Vec<Block>) -> anyhow::Result<bool> {
    let phc = PasswordHash::new(stored)
        .map_err(|e| anyhow::anyhow!("stored password hash is malformed: {e}"))?;
    let algorithm = Algorithm::try_from(phc.algorithm)
        .map_err(|e| anyhow::anyhow!("stored password hash: {e}"))?;
    let version = phc
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|e| anyhow::anyhow!("stored password hash: {e}"))?
        .unwrap_or_default();
    let params =
        Params::try_from(&phc).map_err(|e| anyhow::anyhow!("stored password hash: {e}"))?;
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        anyhow::bail!("stored password hash has no salt or no hash");
    };
    let params = Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        Some(expected.len()),
    )
    .map_err(|e| anyhow::anyhow!("stored password hash: {e}"))?;
    let out = compute(password, salt, algorithm, version, &params, memory)?;
    // `Output`'s equality is constant-time.
    Ok(out == expected)
}

/// The raw argon2 output, computed in this thread's `memory` (grown once if a stored hash
/// asks for more, up to `MAX_BLOCKS`).
fn compute(
    password: &str,
    salt: Salt<'_>,
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    memory: &mut Vec<Block>,
) -> anyhow::Result<Output> {
    let blocks = params.block_count();
    if blocks > MAX_BLOCKS {
        anyhow::bail!("stored password hash asks for {blocks} KiB of memory");
    }
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| anyhow::anyhow!("password salt: {e}"))?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    Output::init_with(len, |out| {
        argon2
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt_bytes,
                out,
                &mut memory[..blocks],
            )
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
}

fn work(receiver: &Mutex<Receiver<Job>>) {
    // Allocated at the first hash, then kept for the life of the thread.
    let mut memory = Vec::new();
    loop {
        let job = match receiver.lock() {
            Ok(queue) => queue.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            // A panic inside argon2 loses that one answer (its caller gets an internal
            // error), not the thread.
            Ok(job) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut memory)));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[test]
    fn hashes_verify_both_ways_with_the_argon2_crate() {
        let mut memory = Vec::new();
        let ours = hash("correct horse", &mut memory).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong horse", &parsed)
                .is_err()
        );
        let theirs = Argon2::default()
            .hash_password(b"battery staple", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify("battery staple", &theirs, &mut memory).unwrap());
        assert!(!verify("battery stapler", &theirs, &mut memory).unwrap());
        assert!(verify("x", "not a hash", &mut memory).is_err());
    }
}
