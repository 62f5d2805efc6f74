//! Printing objects and errors the way kubectl does.

use serde_json::Value;
use shoal_api::ResourceInfo;
use shoal_api::table;

/// `deployment.apps`, `pod`: how kubectl names a kind in its messages.
pub fn kind_name(info: &ResourceInfo) -> String {
    if info.group.is_empty() { info.singular.to_owned() } else { format!("{}.{}", info.singular, info.group) }
}

/// Prints an error as kubectl does: `Error from server (Reason): message` for API errors.
pub fn print_error(error: &anyhow::Error) {
    match (error.downcast_ref::<shoal_client::Error>(), error.downcast_ref::<shoal_oci::Error>()) {
        (Some(shoal_client::Error::Api(status)), _) => eprintln!("Error from server ({}): {}", status.reason, status.message),
        (_, Some(shoal_oci::Error::Registry { registry, status, code, message })) => {
            eprintln!("Error from registry {registry} ({status} {code}): {message}")
        }
        _ => eprintln!("error: {error:#}"),
    }
}

/// Renders rows under their headers with two-space gaps, like kubectl's tabwriter.
pub fn print_table(headers: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(String::len).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let render = |cells: &[String]| {
        let mut line = String::new();
        for (index, cell) in cells.iter().enumerate() {
            if index + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[index]));
            }
        }
        line.trim_end().to_owned()
    };
    println!("{}", render(headers));
    for row in rows {
        println!("{}", render(row));
    }
}

/// Headers and cells for `objects`, with a NAMESPACE column first when listing all namespaces.
pub fn table_rows(info: &ResourceInfo, objects: &[Value], wide: bool, all_namespaces: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let now = jiff::Timestamp::now();
    let columns = table::columns(info);
    let keep: Vec<bool> = columns.iter().map(|c| wide || c.priority == 0).collect();
    let mut headers: Vec<String> = columns.iter().zip(&keep).filter(|(_, k)| **k).map(|(c, _)| c.name.to_owned()).collect();
    if all_namespaces && info.namespaced {
        headers.insert(0, "NAMESPACE".into());
    }
    let rows = objects
        .iter()
        .map(|object| {
            let mut cells: Vec<String> = table::row(info, object, now).into_iter().zip(&keep).filter(|(_, k)| **k).map(|(c, _)| c).collect();
            if all_namespaces && info.namespaced {
                cells.insert(0, object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned());
            }
            cells
        })
        .collect();
    (headers, rows)
}
