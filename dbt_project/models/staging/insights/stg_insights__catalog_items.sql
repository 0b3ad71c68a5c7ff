with source as (

    select * from {{ source('raw', 'catalog_items') }}

),

renamed as (

    select
        item_id,
        title,
        description,
        category,
        split_part(category, ' > ', 1) as category_l1,
        brand,
        price,
        currency,
        coalesce(in_stock, true) as in_stock,
        created_at
    from source

)

select * from renamed
