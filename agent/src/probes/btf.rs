//! Field offsets of kernel structs, from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`). The sk_msg program reads a few socket fields,
//! and accept()/connect() walk from a descriptor to its socket's addresses,
//! with `bpf_probe_read_kernel`; Rust eBPF programs cannot carry CO-RE
//! relocations, so the loader looks the offsets up here and hands them in.
//!
//! Only what that needs is parsed: the header, the type section walked
//! record by record (sizes per kind from `include/uapi/linux/btf.h`), and
//! the names of struct members. aya-obj parses BTF too but keeps member
//! offsets crate-private.
use std::collections::HashMap;

use waggle_common::SockWalkOffsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("struct {0} not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

struct Member {
    name_off: u32,
    type_id: u32,
    /// Bits from the start of the struct.
    bit_offset: u32,
}

struct Type {
    kind: u32,
    name_off: u32,
    members: Vec<Member>,
}

/// The structs and unions of one BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id - 1.
    types: Vec<Type>,
    by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        let data = std::fs::read(VMLINUX).map_err(|source| BtfError::Read { path: VMLINUX, source })?;
        Btf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("not little-endian BTF"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_at = hdr_len + type_off;
        let strings_at = hdr_len + str_off;
        let type_data = data.get(types_at..types_at + type_len).ok_or(BtfError::Malformed("type section"))?;
        let strings = data.get(strings_at..strings_at + str_len).ok_or(BtfError::Malformed("string section"))?.to_vec();
        let mut btf = Btf { strings, types: Vec::new(), by_name: HashMap::new() };
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 => 4,  // INT
                3 => 12, // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(type_data, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            bit_offset: if kind_flag { offset & 0x00ff_ffff } else { offset },
                        });
                    }
                    12 * vlen
                }
                6 => 8 * vlen,   // ENUM
                13 => 8 * vlen,  // FUNC_PROTO
                14 => 4,         // VAR
                15 => 12 * vlen, // DATASEC
                17 => 4,         // DECL_TAG
                19 => 12 * vlen, // ENUM64
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            at += extra;
            let id = btf.types.len() as u32 + 1;
            if kind == KIND_STRUCT && name_off != 0 {
                let name = btf.name(name_off).to_owned();
                btf.by_name.entry(name).or_insert(id);
            }
            btf.types.push(Type { kind, name_off, members });
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// Byte offset of `member` in struct `strukt`, looking into anonymous
    /// struct/union members too.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self.by_name.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find(id, member, 0, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember { strukt: strukt.to_owned(), member: member.to_owned() })
    }

    fn find(&self, id: u32, member: &str, base_bits: u32, depth: u32) -> Option<u32> {
        let ty = self.types.get(id.checked_sub(1)? as usize)?;
        if depth > 8 || !(ty.kind == KIND_STRUCT || ty.kind == KIND_UNION) {
            return None;
        }
        let _ = ty.name_off;
        for m in &ty.members {
            let bits = base_bits + m.bit_offset;
            if m.name_off == 0 {
                if let Some(found) = self.find(m.type_id, member, bits, depth + 1) {
                    return Some(found);
                }
            } else if self.name(m.name_off) == member {
                return Some(bits);
            }
        }
        None
    }
}

/// Offsets (in `struct tcp_sock`, whose first member is ultimately a
/// `struct sock`) of the fields that decide whether a send can complete
/// without waiting for memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendRoomOffsets {
    pub sndbuf: u32,
    pub wmem_queued: u32,
    pub write_seq: u32,
    pub snd_nxt: u32,
    pub notsent_lowat: u32,
}

impl SendRoomOffsets {
    pub fn from_btf(btf: &Btf) -> Result<SendRoomOffsets, BtfError> {
        Ok(SendRoomOffsets {
            sndbuf: btf.member_offset("sock", "sk_sndbuf")?,
            wmem_queued: btf.member_offset("sock", "sk_wmem_queued")?,
            write_seq: btf.member_offset("tcp_sock", "write_seq")?,
            snd_nxt: btf.member_offset("tcp_sock", "snd_nxt")?,
            notsent_lowat: btf.member_offset("tcp_sock", "notsent_lowat")?,
        })
    }
}

/// Offsets of the descriptor → socket → addresses walk (see
/// `waggle_common::SockWalkOffsets`), `enabled` set.
pub fn sock_walk_offsets(btf: &Btf) -> Result<SockWalkOffsets, BtfError> {
    // struct sock starts with struct sock_common, which holds the addresses.
    let common = btf.member_offset("sock", "__sk_common")?;
    let skc = |member: &str| btf.member_offset("sock_common", member).map(|off| off + common);
    Ok(SockWalkOffsets {
        enabled: 1,
        task_files: btf.member_offset("task_struct", "files")?,
        files_fdt: btf.member_offset("files_struct", "fdt")?,
        fdt_max_fds: btf.member_offset("fdtable", "max_fds")?,
        fdt_fd: btf.member_offset("fdtable", "fd")?,
        file_inode: btf.member_offset("file", "f_inode")?,
        file_private_data: btf.member_offset("file", "private_data")?,
        inode_mode: btf.member_offset("inode", "i_mode")?,
        socket_type: btf.member_offset("socket", "type")?,
        socket_sk: btf.member_offset("socket", "sk")?,
        skc_family: skc("skc_family")?,
        skc_daddr: skc("skc_daddr")?,
        skc_rcv_saddr: skc("skc_rcv_saddr")?,
        skc_dport: skc("skc_dport")?,
        skc_num: skc("skc_num")?,
        skc_v6_daddr: skc("skc_v6_daddr")?,
        skc_v6_rcv_saddr: skc("skc_v6_rcv_saddr")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_socket_walk_in_this_kernels_btf() {
        let btf = Btf::from_sys_fs().expect("every supported kernel has BTF");
        let off = sock_walk_offsets(&btf).expect("socket walk fields");
        assert_eq!(off.enabled, 1);
        // Layouts every kernel since 5.x shares: the address pair opens
        // sock_common, ports follow the hash, max_fds opens fdtable.
        assert_eq!((off.skc_daddr, off.skc_rcv_saddr), (0, 4));
        assert_eq!((off.skc_dport, off.skc_num), (12, 14));
        assert_eq!(off.fdt_max_fds, 0);
        assert!(off.skc_v6_rcv_saddr == off.skc_v6_daddr + 16, "{off:?}");
        assert!(off.task_files > 0 && off.file_private_data > 0 && off.socket_sk > 0, "{off:?}");
    }

    #[test]
    fn finds_socket_fields_in_this_kernels_btf() {
        let Ok(btf) = Btf::from_sys_fs() else {
            panic!("{VMLINUX} unreadable: every supported kernel has BTF");
        };
        let off = SendRoomOffsets::from_btf(&btf).expect("socket fields");
        // struct sock starts tcp_sock; tcp_sock's own fields come after it.
        assert!(off.sndbuf > 0 && off.wmem_queued > 0);
        let sock_size = btf.member_offset("tcp_sock", "inet_conn").map(|_| ()).is_ok();
        assert!(sock_size);
        assert!(off.write_seq > off.sndbuf && off.snd_nxt > off.sndbuf && off.notsent_lowat > off.sndbuf);
        assert!(matches!(btf.member_offset("sock", "no_such_field"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.member_offset("no_such_struct", "x"), Err(BtfError::NoStruct(_))));
    }
}
