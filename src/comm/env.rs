//! Reading a [`Config`] from the variables a launcher sets.

use super::Config;
use crate::Error;

/// Builds a config from environment lookups (`get(name)`), in this order of preference:
/// `RINGCC_*`, torchrun, Open MPI, Slurm.
///
/// # Errors
/// [`Error::Config`] naming a missing, malformed or contradictory variable.
pub(crate) fn config_from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
    let rank = get("RINGCC_RANK").ok_or_else(|| Error::Config("RINGCC_RANK is not set".into()))?;
    let world = get("RINGCC_WORLD_SIZE").ok_or_else(|| Error::Config("RINGCC_WORLD_SIZE is not set".into()))?;
    let rank: usize = rank.parse().map_err(|_| Error::Config(format!("RINGCC_RANK={rank} is not a number")))?;
    let world: usize =
        world.parse().map_err(|_| Error::Config(format!("RINGCC_WORLD_SIZE={world} is not a number")))?;
    let mut c = Config::new(rank, world);
    if let Some(a) = get("RINGCC_COORDINATOR") {
        c.coordinator = a;
        c.host_coordinator = false;
    }
    Ok(c)
}
