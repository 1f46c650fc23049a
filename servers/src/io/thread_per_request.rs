//! Work in progress.

use anyhow::{bail, Result};

use crate::cli::Args;

pub fn run(args: &Args) -> Result<()> {
    bail!("the {} variant is not built yet", args.variant.name())
}
