//! The exec-time environment program (`waggle_common::exec_env`): it reads
//! `mm->env_start`/`env_end` of the exec'ing task along offsets from the
//! kernel's BTF. Without them (no BTF) it stays unattached and services are
//! named from /proc/<pid>/environ alone, said in one line.
use aya::{
    maps::{Array, MapData},
    programs::TracePoint,
    Ebpf,
};
use waggle_common::exec_env::{maps, ExecEnvOffsets, PROGRAM};

use super::{
    btf::{Btf, BtfError},
    error::AttachError,
    maps::Plain,
};

/// Offsets of the walk from the current task to its environment.
pub fn exec_env_offsets(btf: &Btf) -> Result<ExecEnvOffsets, BtfError> {
    Ok(ExecEnvOffsets {
        enabled: 1,
        task_mm: btf.member_offset("task_struct", "mm")?,
        mm_env_start: btf.member_offset("mm_struct", "env_start")?,
        mm_env_end: btf.member_offset("mm_struct", "env_end")?,
    })
}

/// Sets the offsets and attaches the program to sched_process_exec (after
/// `sched_process_exec`, whose selection reset comes first); Err(reason)
/// when it cannot run on this kernel.
pub(super) fn attach_exec_env(ebpf: &mut Ebpf, btf: &Result<Btf, BtfError>) -> Result<(), String> {
    let btf = btf.as_ref().map_err(|e| format!("no kernel BTF ({e})"))?;
    let offsets =
        exec_env_offsets(btf).map_err(|e| format!("the environment's bounds are not in the kernel's BTF ({e})"))?;
    let map =
        ebpf.map_mut(maps::EXEC_ENV_WALK).ok_or_else(|| format!("map {} not in the object", maps::EXEC_ENV_WALK))?;
    let mut array: Array<&mut MapData, Plain<ExecEnvOffsets>> = Array::try_from(map).map_err(|e| e.to_string())?;
    array.set(0, Plain(offsets), 0).map_err(|e| e.to_string())?;
    let attach = |ebpf: &mut Ebpf| -> Result<(), AttachError> {
        let program: &mut TracePoint = ebpf.program_mut(PROGRAM).ok_or(AttachError::NotInObject)?.try_into()?;
        program.load()?;
        program.attach("sched", "sched_process_exec")?;
        Ok(())
    };
    attach(ebpf).map_err(|e| e.describe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_environment_bounds_in_this_kernels_btf() {
        let btf = Btf::from_sys_fs().expect("every supported kernel has BTF");
        let off = exec_env_offsets(&btf).expect("task_struct.mm, mm_struct.env_start/env_end");
        // env_end follows env_start (both unsigned long).
        assert_eq!(off.mm_env_end, off.mm_env_start + 8, "{off:?}");
        assert!(off.task_mm > 0);
    }
}
