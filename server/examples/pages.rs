//! Print the column chunk and page layout (offset index) of columns of a parquet file.
//!
//! cargo run -p astroflight-server --example pages -- FILE.parquet candid cutoutScience.stampData
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::PageIndexPolicy;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let opts = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let b = ParquetRecordBatchReaderBuilder::try_new_with_options(std::fs::File::open(&path).unwrap(), opts).unwrap();
    let md = b.metadata();
    let sd = md.file_metadata().schema_descr();
    for name in std::env::args().skip(2) {
        let i = (0..sd.num_columns())
            .find(|&i| sd.column(i).path().string() == name)
            .unwrap();
        let cc = md.row_group(0).column(i);
        println!(
            "{name}: chunk offset {} len {} dict {:?} data {}",
            cc.byte_range().0,
            cc.byte_range().1,
            cc.dictionary_page_offset(),
            cc.data_page_offset()
        );
        if let Some(oi) = md.offset_index() {
            for p in &oi[0][i].page_locations {
                println!(
                    "  page off {} size {} first_row {}",
                    p.offset, p.compressed_page_size, p.first_row_index
                );
            }
        }
    }
}
